// The GEMM convs: the 1x1 conv with g >= 1 groups, the dense k x k conv (the stems) and the
// classifier, forward with an epilogue and their gradients; their GEMMs are oneDNN's sgemm from
// the libdnnl MindSpore ships (portable loops when a MindSpore build has none).
#include "kernels.h"

#ifdef ZOO_WITH_DNNL
// oneDNN's row-major sgemm, from the libdnnl MindSpore ships and computes its own convs with.
extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc);
#endif

namespace zoo {

void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
           const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
#ifdef ZOO_WITH_DNNL
  dnnl_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
#else
  // Portable loops for a MindSpore without libdnnl; rows of C are updated along n.
  std::vector<float> bt;
  if (tb == 'T') {  // transpose B (n x k) into k x n so the inner loop runs along rows
    bt.resize(static_cast<size_t>(k * n));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t l = 0; l < k; ++l) bt[l * n + j] = b[j * ldb + l];
    b = bt.data();
    ldb = n;
  }
  for (int64_t i = 0; i < m; ++i) {
    float *__restrict crow = c + i * ldc;
    if (beta == 0.0f) std::fill(crow, crow + n, 0.0f);
    for (int64_t l = 0; l < k; ++l) {
      const float av = ta == 'T' ? a[l * lda + i] : a[i * lda + l];
      const float *__restrict brow = b + l * ldb;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
    }
  }
#endif
}

// ---------------------------------------------------------------- 1x1 with g groups

namespace {

// dw = the sum over n images of their weight gradients, which accumulate(b, buffer, scratch)
// adds into a zeroed buffer of ``size`` floats. Each thread sums its share of the images into a
// buffer of its own, with ``scratch`` floats of its own for im2col; then the buffers are added.
template <typename Accumulate>
void sum_over_batch(int64_t n, int64_t size, int64_t scratch, float *dw, Accumulate accumulate) {
  const int workers = std::max<int64_t>(1, std::min<int64_t>(threads(), n));
  std::vector<float> partial(static_cast<size_t>(workers * size), 0.0f);
#pragma omp parallel num_threads(workers)
  {
    std::vector<float> own(static_cast<size_t>(scratch));
    float *mine = partial.data() + omp_get_thread_num() * size;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n; ++b) accumulate(b, mine, own.data());
  }
  for (int64_t i = 0; i < size; ++i) {
    float sum = 0.0f;
    for (int t = 0; t < workers; ++t) sum += partial[t * size + i];
    dw[i] = sum;
  }
}

// x (N, Cin, H, W), weight (Cout, Cin / groups, 1, 1); y (N, Cout, H, W) adds nothing.
GroupedShape grouped_shape(const int64_t *x, const int64_t *wt, const int64_t *) {
  const int64_t groups = wt[1] > 0 ? x[1] / wt[1] : 0;
  return GroupedShape{x[0], x[1], wt[0], x[2] * x[3], wt[1],
                      groups > 0 ? wt[0] / groups : 0, groups};
}

// How wide a slice of its columns each of ``blocks`` GEMMs of ``columns`` columns is cut into,
// so that every thread has work: the whole width when there are at least as many GEMMs as
// threads (a batch), else a multiple of 16 columns (at batch 1 one GEMM a layer left every core
// but one idle).
int64_t column_slice(int64_t blocks, int64_t columns) {
  if (blocks >= threads()) return columns;
  const int64_t pieces = (threads() + blocks - 1) / blocks;
  const int64_t width = ((columns + pieces - 1) / pieces + 15) / 16 * 16;
  return std::max<int64_t>(16, std::min(width, columns));
}

// For every image b and group j, out[b, j] = op(w[j]) . in[b, j]: op the identity for the
// forward (x[b, j] (cin_per_group x hw) -> y[b, j] (cout_per_group x hw)), the transpose for the
// input gradient (dy[b, j] -> dx[b, j]), in slices of columns (column_slice).
// epilogue(channel, outputs, count) runs on each output row's slice.
template <typename Epilogue>
void conv1x1_gemms(const GroupedShape &s, bool transposed, const float *in, const float *wt,
                   float *out, const Epilogue &epilogue, ChannelView from = {},
                   ChannelView to = {}) {
  const int64_t rows = transposed ? s.cin_per_group : s.cout_per_group;
  const int64_t depth = transposed ? s.cout_per_group : s.cin_per_group;
  const int64_t in_channels = from.channels ? from.channels : transposed ? s.cout : s.cin;
  const int64_t out_channels = to.channels ? to.channels : transposed ? s.cin : s.cout;
  const int64_t width = column_slice(s.n * s.groups, s.hw);
  const int64_t slices = (s.hw + width - 1) / width;
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(s.n * s.hw * s.cin_per_group * s.cout_per_group * s.groups))
  for (int64_t t = 0; t < s.n * s.groups * slices; ++t) {
    const int64_t b = t / (s.groups * slices), j = t / slices % s.groups;
    const int64_t first = t % slices * width, count = std::min(width, s.hw - first);
    float *block = out + (b * out_channels + to.first + j * rows * to.step) * s.hw + first;
    sgemm(transposed ? 'T' : 'N', 'N', rows, count, depth,
          wt + j * s.cout_per_group * s.cin_per_group, s.cin_per_group,
          in + (b * in_channels + from.first + j * depth * from.step) * s.hw + first,
          from.step * s.hw, 0.0f, block, to.step * s.hw);
    for (int64_t r = 0; r < rows; ++r) epilogue(j * rows + r, block + r * to.step * s.hw, count);
  }
}

}  // namespace

template <typename Epilogue>
void conv1x1_forward(const GroupedShape &s, const float *x, const float *wt, float *y,
                     const Epilogue &epilogue, ChannelView from, ChannelView to) {
  conv1x1_gemms(s, false, x, wt, y, epilogue, from, to);
}

// The whole units (whole_units.cc) call these.
template void conv1x1_forward<BatchNormActivation>(const GroupedShape &, const float *,
                                                   const float *, float *,
                                                   const BatchNormActivation &, ChannelView,
                                                   ChannelView);
template void conv1x1_forward<BatchNormAddReLU>(const GroupedShape &, const float *,
                                                const float *, float *, const BatchNormAddReLU &,
                                                ChannelView, ChannelView);

namespace {

void conv1x1_grad_input(const GroupedShape &s, const float *dy, const float *wt, float *dx) {
  conv1x1_gemms(s, true, dy, wt, dx, NoEpilogue());
}

// dw[j] (cout_per_group x cin_per_group) = sum over b of dy[b, j] . x[b, j]^T
void conv1x1_grad_weight(const GroupedShape &s, const float *dy, const float *x, float *dw) {
  const int64_t co = s.cout_per_group, ci = s.cin_per_group;
  sum_over_batch(s.n, s.cout * ci, 0, dw, [&](int64_t b, float *mine, float *) {
    for (int64_t j = 0; j < s.groups; ++j)
      sgemm('N', 'T', co, ci, s.hw, dy + (b * s.cout + j * co) * s.hw, s.hw,
            x + (b * s.cin + j * ci) * s.hw, s.hw, 1.0f, mine + j * co * ci, ci);
  });
}

// ---------------------------------------------------------------- dense k x k (the stems)
// im2col + GEMM: MindSpore 2.10's CPU Conv2D took 883 ms for ShuffleNetV2's 3 -> 24 stem
// conv at batch 32, 224 x 224, 42 % of a training step (profiled here).

struct DenseShape {
  int64_t n, cin, h, w, cout, k, ho, wo, stride, pad;
  int64_t taps() const { return cin * k * k; }
  bool valid() const { return k % 2 == 1; }
};

// x (N, Cin, H, W), weight (Cout, Cin, k, k), y (N, Cout, Ho, Wo).
template <int S>
DenseShape dense_shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
  return DenseShape{x[0], x[1], x[2], x[3], wt[0], wt[2], y[2], y[3], S, wt[2] / 2};
}

// col (Cin k k, Ho Wo) of one image: col[(ci k + kh) k + kw][oh Wo + ow] = x[ci][ih][iw].
void im2col(const DenseShape &d, const float *x, float *col) {
  for (int64_t ci = 0; ci < d.cin; ++ci)
    for (int64_t kh = 0; kh < d.k; ++kh)
      for (int64_t kw = 0; kw < d.k; ++kw) {
        float *out = col + ((ci * d.k + kh) * d.k + kw) * d.ho * d.wo;
        for (int64_t oh = 0; oh < d.ho; ++oh) {
          const int64_t ih = oh * d.stride - d.pad + kh;
          float *row = out + oh * d.wo;
          if (ih < 0 || ih >= d.h) {
            std::fill(row, row + d.wo, 0.0f);
            continue;
          }
          const float *xrow = x + (ci * d.h + ih) * d.w;
          for (int64_t ow = 0; ow < d.wo; ++ow) {
            const int64_t iw = ow * d.stride - d.pad + kw;
            row[ow] = iw >= 0 && iw < d.w ? xrow[iw] : 0.0f;
          }
        }
      }
}

// The adjoint of im2col: dx[ci][ih][iw] += col[...] (dx zeroed first).
void col2im(const DenseShape &d, const float *col, float *dx) {
  std::fill(dx, dx + d.cin * d.h * d.w, 0.0f);
  for (int64_t ci = 0; ci < d.cin; ++ci)
    for (int64_t kh = 0; kh < d.k; ++kh)
      for (int64_t kw = 0; kw < d.k; ++kw) {
        const float *in = col + ((ci * d.k + kh) * d.k + kw) * d.ho * d.wo;
        for (int64_t oh = 0; oh < d.ho; ++oh) {
          const int64_t ih = oh * d.stride - d.pad + kh;
          if (ih < 0 || ih >= d.h) continue;
          float *dxrow = dx + (ci * d.h + ih) * d.w;
          for (int64_t ow = 0; ow < d.wo; ++ow) {
            const int64_t iw = ow * d.stride - d.pad + kw;
            if (iw >= 0 && iw < d.w) dxrow[iw] += in[oh * d.wo + ow];
          }
        }
      }
}

// The patches of output row oh of one image without copying each tap: tap (ci, kh, kw) of output
// column ow reads padded input column ow * S + kw, which is element ow + kw / S of phase kw % S
// of that input row (its columns p, p + S, p + 2S, ... of the zero-padded row). So each input
// row the output row needs is split into S phase rows once (``phases``, ``span`` floats each,
// zeros past the row), and rows[(ci k + kh) k + kw] points into them (or at ``zeros``).
template <int S>
void patch_rows(const DenseShape &d, const float *x, int64_t oh, float *phases, int64_t span,
                const float *zeros, const float **rows) {
  for (int64_t ci = 0; ci < d.cin; ++ci)
    for (int64_t kh = 0; kh < d.k; ++kh) {
      const int64_t ih = oh * S - d.pad + kh, at = ci * d.k + kh;
      float *phase = phases + at * S * span;
      if (ih >= 0 && ih < d.h) {
        const float *xrow = x + (ci * d.h + ih) * d.w;
        for (int64_t p = 0; p < S; ++p) {
          float *out = phase + p * span;
          // padded column m * S + p is input column m * S + p - pad: inside for m in [lo, hi)
          const int64_t lo = std::min(span, (d.pad - p + S - 1) / S);
          const int64_t hi = std::max(lo, std::min(span, (d.w - 1 + d.pad - p) / S + 1));
          std::fill(out, out + lo, 0.0f);
          const float *__restrict in = xrow + p - d.pad;
#pragma omp simd
          for (int64_t m = lo; m < hi; ++m) out[m] = in[m * S];
          std::fill(out + hi, out + span, 0.0f);
        }
      }
      for (int64_t kw = 0; kw < d.k; ++kw)
        rows[at * d.k + kw] = ih >= 0 && ih < d.h ? phase + kw % S * span + kw / S : zeros;
    }
}

// out[r][0, count) = sum over t of wt[r][t] rows[t][j] for R output channels at once, 16
// columns at a time: R x 16 sums stay in registers while the taps stream past (the stems'
// K = 27 and M = 24 or 32 are too small for a GEMM library to be quick).
template <int R>
void rows_times_patches(int64_t taps, int64_t count, const float *wt, const float *const *rows,
                        float *out, int64_t out_stride) {
  for (int64_t j0 = 0; j0 < count; j0 += 16) {
    float acc[R][16] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const float *v = rows[t] + j0;
      for (int r = 0; r < R; ++r) {
        const float wv = wt[r * taps + t];
#pragma omp simd
        for (int l = 0; l < 16; ++l) acc[r][l] += wv * v[l];
      }
    }
    const int64_t valid = std::min<int64_t>(16, count - j0);
    for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + valid, out + r * out_stride + j0);
  }
}

// One output row at a time, every image's rows shared among the threads: the row's patches
// (patch_rows), times the weights 8 output channels at a time, then the epilogue while the row
// is in cache. Batch 1 was an image-wide im2col on one thread, then the GEMM: ShuffleNetV2's
// stem (3 -> 24, 224 x 224) took 1.39 ms of a 7.6 ms inference inside ops (profiled here).
template <int S, typename Epilogue>
void dense_forward(const DenseShape &d, const float *x, const float *wt, float *y,
                   const Epilogue &epilogue) {
  const int64_t plane = d.ho * d.wo, columns = (d.wo + 15) / 16 * 16;
  const int64_t span = columns + d.k / S + 1;  // what a 16-column block may read
  const std::vector<float> zeros(static_cast<size_t>(span), 0.0f);
#pragma omp parallel num_threads(threads_for(d.n * plane * d.cout * d.taps()))
  {
    std::vector<float> phases(static_cast<size_t>(d.cin * d.k * S * span));
    std::vector<const float *> rows(static_cast<size_t>(d.taps()));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < d.n * d.ho; ++r) {
      const int64_t b = r / d.ho, oh = r % d.ho;
      patch_rows<S>(d, x + b * d.cin * d.h * d.w, oh, phases.data(), span, zeros.data(),
                    rows.data());
      float *out = y + b * d.cout * plane + oh * d.wo;
      int64_t c = 0;
      for (; c + 8 <= d.cout; c += 8)
        rows_times_patches<8>(d.taps(), d.wo, wt + c * d.taps(), rows.data(), out + c * plane,
                              plane);
      for (; c < d.cout; ++c)
        rows_times_patches<1>(d.taps(), d.wo, wt + c * d.taps(), rows.data(), out + c * plane,
                              plane);
      for (c = 0; c < d.cout; ++c) epilogue(c, out + c * plane, d.wo);
    }
  }
}

void dense_grad_input(const DenseShape &d, const float *dy, const float *wt, float *dx) {
#pragma omp parallel num_threads(threads())
  {
    std::vector<float> col(static_cast<size_t>(d.taps() * d.ho * d.wo));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < d.n; ++b) {
      sgemm('T', 'N', d.taps(), d.ho * d.wo, d.cout, wt, d.taps(), dy + b * d.cout * d.ho * d.wo,
            d.ho * d.wo, 0.0f, col.data(), d.ho * d.wo);
      col2im(d, col.data(), dx + b * d.cin * d.h * d.w);
    }
  }
}

void dense_grad_weight(const DenseShape &d, const float *dy, const float *x, float *dw) {
  sum_over_batch(d.n, d.cout * d.taps(), d.taps() * d.ho * d.wo, dw,
                 [&](int64_t b, float *mine, float *col) {
    im2col(d, x + b * d.cin * d.h * d.w, col);
    sgemm('N', 'T', d.cout, d.taps(), d.ho * d.wo, dy + b * d.cout * d.ho * d.wo, d.ho * d.wo,
          col, d.ho * d.wo, 1.0f, mine, d.taps());
  });
}

// ---------------------------------------------------------------- the classifier (inference)
// y (N, M) = x (N, K) w^T (+ b): the networks' last layer, its output columns cut among the
// threads. MindSpore 2.10's CPU MatMul took 0.5 ms of a ShuffleNetV2 inference at batch 1
// (1024 -> 1000), oneDNN's sgemm 0.06 (profiled here).
int fully_connected(int nparam, void **params, int64_t **shapes, const char **dtypes,
                    bool bias) {
  if (nparam != (bias ? 4 : 3) || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0], *ws = shapes[1], *ys = shapes[nparam - 1];
  const int64_t n = xs[0], k = xs[1], m = ws[0];
  if (ws[1] != k || ys[0] != n || ys[1] != m || (bias && shapes[2][0] != m)) return 2;
  const float *x = tensor(params, 0), *w = tensor(params, 1);
  const float *b = bias ? tensor(params, 2) : nullptr;
  float *y = tensor(params, nparam - 1);
  const int64_t width = column_slice(1, m), slices = (m + width - 1) / width;
#pragma omp parallel for schedule(static) num_threads(threads_for(n * m * k))
  for (int64_t t = 0; t < slices; ++t) {
    const int64_t first = t * width, count = std::min(width, m - first);
    sgemm('N', 'T', n, count, k, x, k, w + first * k, k, 0.0f, y + first, m);
    if (b)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = first; j < first + count; ++j) y[i * m + j] += b[j];
  }
  return 0;
}

struct Conv1x1 {
  static GroupedShape shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
    return grouped_shape(x, wt, y);
  }
  template <typename E>
  static void forward(const GroupedShape &s, const float *x, const float *wt, float *y,
                      const E &epilogue) {
    conv1x1_forward(s, x, wt, y, epilogue);
  }
  static void grad_input(const GroupedShape &s, const float *dy, const float *wt, float *dx) {
    conv1x1_grad_input(s, dy, wt, dx);
  }
  static void grad_weight(const GroupedShape &s, const float *dy, const float *x, float *dw) {
    conv1x1_grad_weight(s, dy, x, dw);
  }
};

template <int S>
struct Dense {
  static DenseShape shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
    return dense_shape<S>(x, wt, y);
  }
  template <typename E>
  static void forward(const DenseShape &d, const float *x, const float *wt, float *y,
                      const E &epilogue) {
    dense_forward<S>(d, x, wt, y, epilogue);
  }
  static void grad_input(const DenseShape &d, const float *dy, const float *wt, float *dx) {
    dense_grad_input(d, dy, wt, dx);
  }
  static void grad_weight(const DenseShape &d, const float *dy, const float *x, float *dw) {
    dense_grad_weight(d, dy, x, dw);
  }
};

}  // namespace

extern "C" {
// Training: forward and gradients; inference: {kernel}BN{activation}
int Conv1x1Forward(AOT_ARGS) { return forward_entry<Conv1x1>(PASS); }
int Conv1x1GradInput(AOT_ARGS) { return grad_input_entry<Conv1x1>(PASS); }
int Conv1x1GradWeight(AOT_ARGS) { return grad_weight_entry<Conv1x1>(PASS); }
int DenseS1Forward(AOT_ARGS) { return forward_entry<Dense<1>>(PASS); }
int DenseS1GradInput(AOT_ARGS) { return grad_input_entry<Dense<1>>(PASS); }
int DenseS1GradWeight(AOT_ARGS) { return grad_weight_entry<Dense<1>>(PASS); }
int DenseS2Forward(AOT_ARGS) { return forward_entry<Dense<2>>(PASS); }
int DenseS2GradInput(AOT_ARGS) { return grad_input_entry<Dense<2>>(PASS); }
int DenseS2GradWeight(AOT_ARGS) { return grad_weight_entry<Dense<2>>(PASS); }
int Conv1x1BN(AOT_ARGS) { return inference_entry<Conv1x1, Activation::kNone>(PASS); }
int Conv1x1BNReLU(AOT_ARGS) { return inference_entry<Conv1x1, Activation::kReLU>(PASS); }
int Conv1x1BNReLU6(AOT_ARGS) { return inference_entry<Conv1x1, Activation::kReLU6>(PASS); }
int DenseS1BN(AOT_ARGS) { return inference_entry<Dense<1>, Activation::kNone>(PASS); }
int DenseS1BNReLU(AOT_ARGS) { return inference_entry<Dense<1>, Activation::kReLU>(PASS); }
int DenseS1BNReLU6(AOT_ARGS) { return inference_entry<Dense<1>, Activation::kReLU6>(PASS); }
int DenseS2BN(AOT_ARGS) { return inference_entry<Dense<2>, Activation::kNone>(PASS); }
int DenseS2BNReLU(AOT_ARGS) { return inference_entry<Dense<2>, Activation::kReLU>(PASS); }
int DenseS2BNReLU6(AOT_ARGS) { return inference_entry<Dense<2>, Activation::kReLU6>(PASS); }
int FullyConnected(AOT_ARGS) { return fully_connected(PASS, false); }
int FullyConnectedBias(AOT_ARGS) { return fully_connected(PASS, true); }
}  // extern "C"
}  // namespace zoo
