"""The config loader: types, flags, refusals; and the command line's one-line errors."""
import re

import pytest

from src.errors import UserError
from src.model_utils.config import get_config


def test_import_parses_no_argv_and_defaults_load():
    config = get_config([])
    assert config.dataset == "cifar10" and config.num_classes == 10
    assert isinstance(config.lr_init, float) and isinstance(config.is_distributed, bool)


def test_flags_override_with_the_keys_type():
    config = get_config(["--lr_init", "0", "--epoch_size", "3", "--is_distributed", "true",
                         "--network", "shufflenet_v1_g8_15"])
    assert config.lr_init == 0.0 and isinstance(config.lr_init, float)
    assert config.epoch_size == 3 and config.is_distributed is True
    assert config.network == "shufflenet_v1_g8_15"
    assert config.explicit == {"lr_init", "epoch_size", "is_distributed", "network"}


def test_other_yaml_overrides_the_defaults():
    config = get_config(["--config_path", "default_config_imagenet.yaml"])
    assert (config.dataset, config.network, config.num_classes) == ("imagenet",
                                                                     "shufflenet_v1_g3_20", 1000)
    assert config.weight_decay == pytest.approx(4e-5) and config.label_smooth_factor == 0.1
    assert config.log_interval == 10  # from default_config.yaml


@pytest.mark.parametrize("argv, message", [
    (["--epoch_sizee", "3"], "unknown key 'epoch_sizee'"),
    (["--epoch_size", "three"], "epoch_size must be an integer"),
    (["--is_distributed", "maybe"], "is_distributed must be True or False"),
    (["--epoch_size", "-1"], "epoch_size = -1 is out of range"),
    (["--batch_size", "0"], "batch_size = 0 is out of range"),
    (["--lr_max", "-0.1"], "lr_max = -0.1 is out of range"),
    (["--label_smooth_factor", "1.0"], "label_smooth_factor = 1.0 is out of range"),
    (["--amp_level", "O4"], "amp_level 'O4' is not allowed"),
    (["--network", "shufflenet_v2_x3_0"], "network 'shufflenet_v2_x3_0' is not allowed"),
    # NaN and Inf compare false with every bound: refused as not finite, for every float key.
    (["--momentum", "nan"], "momentum must be a finite number, got 'nan'"),
    (["--warmup_epochs", "nan"], "warmup_epochs must be a finite number"),
    (["--weight_decay", "nan"], "weight_decay must be a finite number"),
    (["--loss_scale", "inf"], "loss_scale must be a finite number"),
    (["--lr_max", "1e400"], "lr_max must be a finite number"),
    (["--epoch_size", "nan"], "epoch_size must be an integer"),
    (["--seed", "4294967296"], "seed = 4294967296 is out of range"),
    (["--seed", "-1"], "seed = -1 is out of range"),
    (["--image_size", "100000"], "image_size = 100000 is out of range"),
    (["--image_size", "33"], "a multiple of 32"),
    (["--eval_batch_size", "0"], "eval_batch_size = 0 is out of range"),
    (["--color_jitter", "2"], "color_jitter = 2.0 is out of range"),
])
def test_bad_values_are_refused_naming_the_key(argv, message):
    with pytest.raises(UserError, match=message) as err:
        get_config(argv)
    assert err.value.line().startswith("error: ")


def test_every_number_and_choice_has_a_rule():
    """One rule table: a numeric key without a rule would take NaN, 0 or -1 silently."""
    from src.model_utils.config import RULES, Range
    config = vars(get_config([]))
    numeric = {k for k, v in config.items() if isinstance(v, (int, float))
               and not isinstance(v, bool)}
    assert numeric <= {k for k, rule in RULES.items() if isinstance(rule, Range)}, \
        numeric - set(RULES)
    assert get_config(["--seed", str(2 ** 32 - 1), "--image_size", "1024"]).seed == 2 ** 32 - 1


@pytest.mark.parametrize("text, message", [
    (b"batch_size: [16, 32]\n", "batch_size must be an integer, got [16, 32]"),
    (b"lr_max: {a: 1}\n", "lr_max must be a finite number, got {'a': 1}"),
    (b"dataset_path: [a, b]\n", "dataset_path must be one text value"),
    (b"lr_max: .nan\n", "lr_max must be a finite number"),
    ("network: caf\xe9\n".encode("latin-1"), "config is not UTF-8 text (byte 0xe9"),
    (b"lr_max: 0.1\nepoch_size: 3\nlr_max: 0.2\n", "key 'lr_max' is written twice (line 3)"),
])
def test_yaml_values_of_the_wrong_kind_are_refused(tmp_path, text, message):
    path = tmp_path / "my.yaml"
    path.write_bytes(text)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        get_config(["--config_path", str(path)])
    assert err.value.where == str(path)


def test_unknown_key_in_a_yaml_is_refused(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("epoch_size: 3\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        get_config(["--config_path", str(path)])
    path.write_text("epoch_size: [3\n")
    with pytest.raises(UserError, match="not valid yaml"):
        get_config(["--config_path", str(path)])


@pytest.mark.parametrize("args, key", [
    (["--epoch_size", "-1"], "epoch_size"),
    (["--batch_size", "0"], "batch_size"),
    (["--bogus_key", "1"], "bogus_key"),
    (["--lr_init", "fast"], "lr_init"),
    (["--network", "resnet50"], "network"),
    (["--config_path", "missing.yaml"], "missing.yaml"),
])
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_command_line_gives_one_line_and_exit_2(cli, script, args, key):
    result = cli(script, *args)
    assert result.returncode == 2, result.stderr
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_each_choice_list_is_its_owners():
    """The config takes the values the modules that use them define, not copies of them: a list
    re-typed here would drift when its owner grows (a new layout, decay mode, conv form)."""
    from src import dataset, lr_generator
    from src.model_utils.config import RULES
    from src.models import layers, list_networks, mobilenet_v1, shufflenet_v2
    owners = {"pool_pad": layers.POOL_PADS, "shuffle_order": layers.SHUFFLE_ORDERS,
              "activation": mobilenet_v1.ACTIVATIONS, "layout": shufflenet_v2.LAYOUTS,
              "conv_impl": layers.CONV_IMPLS, "input_norm": dataset.INPUT_NORMS,
              "lr_decay_mode": lr_generator.DECAY_MODES, "network": list_networks()}
    for key, owner in owners.items():
        assert RULES[key].shown() == tuple(owner), key
    assert set(RULES["conv_impl"].allowed()) == set(layers.CONV_IMPLS) | set(layers.ALIASES)
    assert get_config(["--conv_impl", "fast"]).conv_impl == "fast"  # an old name: taken
