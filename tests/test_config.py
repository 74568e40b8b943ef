import pytest

from ohem.config import Config, ConfigError, apply_overrides, config_from_dict, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  lr: 0.05\n  steps: [10, 20]\nsampler:\n  method: heuristic\n")
    cfg = load_config(path, ["solver.lr=0.1", "sampler.nms_iou=null", "solver.iterations=7"])
    assert cfg.solver.lr == 0.1 and cfg.solver.steps == [10, 20] and cfg.solver.iterations == 7
    assert cfg.sampler.method == "heuristic" and cfg.sampler.nms_iou is None
    assert cfg.model == Config().model  # untouched sections keep their defaults


def test_int_is_accepted_for_float_but_not_the_reverse():
    cfg = load_config(None, ["solver.lr=1"])
    assert cfg.solver.lr == 1.0 and isinstance(cfg.solver.lr, float)
    with pytest.raises(ConfigError, match=r"'solver.iterations' must be int, got 1.5"):
        load_config(None, ["solver.iterations=1.5"])


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("solver:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'solver.lrr'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'nope.x=1': unknown key 'nope'"):
        load_config(None, ["nope.x=1"])


def test_bad_yaml_and_bad_override_syntax(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("solver: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["solver.lr"])
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict():
    cfg = apply_overrides(Config(), ["sampler.bg_iou_low=0.1", "model.backbone_weights=/w.pth"])
    assert config_from_dict(cfg.to_dict()) == cfg
