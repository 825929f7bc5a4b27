"""An ONNX file's protobuf read and edited in its wire format, so that no onnx package is
needed: the output's batch dimension opened, metadata added and read back, the graph's op
types read.

MindSpore 2.10's ONNX export leaves the input's batch open (dynamic_axes) but declares the
output with the example's batch, so onnxruntime warns "Expected shape from model of {1,10}
does not match actual shape of {8,10}" on every other batch: ``open_onnx_output_batch``
rewrites that one field (ModelProto.graph.output[*].type.tensor_type.shape.dim[0]) to the name
"batch".
"""

# The ops a quantized ONNX graph holds and a float32 one never does.
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd"}


def _varint(data: bytes, i: int) -> tuple:
    value, shift = 0, 0
    while True:
        byte = data[i]
        value, shift, i = value | (byte & 0x7F) << shift, shift + 7, i + 1
        if byte < 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes) -> list:
    """(field number, wire type, payload) of a protobuf message; a length-delimited payload is
    its bytes, any other the raw bytes of its value."""
    fields, i = [], 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, i = _varint(data, i)
            end = i + length
        else:
            end = _varint(data, i)[1] if wire == 0 else i + (8 if wire == 1 else 4)
        fields.append((number, wire, data[i:end]))
        i = end
    return fields


def _message(fields: list) -> bytes:
    return b"".join(_encode_varint(number << 3 | wire) +
                    (_encode_varint(len(payload)) if wire == 2 else b"") + payload
                    for number, wire, payload in fields)


def _edit(data: bytes, path: tuple, change) -> bytes:
    """``data`` with change(payload) applied to every message at field path ``path``."""
    if not path:
        return change(data)
    return _message([(n, w, _edit(p, path[1:], change) if n == path[0] and w == 2 else p)
                     for n, w, p in _fields(data)])


def _open_first_dim(shape: bytes) -> bytes:
    """A TensorShapeProto whose first dim is the name "batch" (Dimension.dim_param)."""
    fields, done = [], False
    for number, wire, payload in _fields(shape):
        if number == 1 and not done:  # the first dim
            payload, done = _message([(2, 2, b"batch")]), True
        fields.append((number, wire, payload))
    return _message(fields)


def add_onnx_metadata(path: str, key: str, value: str) -> None:
    """Add ``key: value`` to the ONNX file's metadata (ModelProto.metadata_props, field 14: a
    repeated field, so one more entry is one more field at the end of the message)."""
    entry = _message([(1, 2, key.encode("utf-8")), (2, 2, value.encode("utf-8"))])
    with open(path, "ab") as f:
        f.write(_message([(14, 2, entry)]))


def open_onnx_output_batch(path: str) -> None:
    """Declare the ONNX file's outputs with an open batch dimension, as its input has."""
    with open(path, "rb") as f:
        model = f.read()
    # ModelProto.graph (7) -> GraphProto.output (12) -> ValueInfoProto.type (2)
    # -> TypeProto.tensor_type (1) -> shape (2)
    model = _edit(model, (7, 12, 2, 1, 2), _open_first_dim)
    with open(path, "wb") as f:
        f.write(model)


def read_onnx_metadata(path: str) -> dict:
    """The ONNX file's metadata (ModelProto.metadata_props) as {key: value}."""
    with open(path, "rb") as f:
        model = f.read()
    found = {}
    for number, wire, payload in _fields(model):
        if number == 14 and wire == 2:
            entry = {n: p.decode("utf-8", "replace") for n, w, p in _fields(payload) if w == 2}
            found[entry.get(1, "")] = entry.get(2, "")
    return found


def op_types(path: str) -> set:
    """The op types of the ONNX file's graph (ModelProto.graph.node[*].op_type); ValueError when
    the file does not parse as a protobuf."""
    with open(path, "rb") as f:
        model = f.read()
    found = set()
    try:
        for number, wire, graph in _fields(model):
            if number == 7 and wire == 2:  # ModelProto.graph -> GraphProto.node (1)
                for node_number, node_wire, node in _fields(graph):
                    if node_number == 1 and node_wire == 2:  # NodeProto.op_type (4)
                        found |= {p.decode("utf-8", "replace") for n, w, p in _fields(node)
                                  if n == 4 and w == 2}
    except IndexError as err:
        raise ValueError(f"{path} does not parse as ONNX") from err
    return found
