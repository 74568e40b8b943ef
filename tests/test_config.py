import pytest

from ohem.config import Config, ConfigError, SamplerConfig, apply_overrides, config_from_dict, load_config


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


def test_base_file_is_deep_merged_under_the_recipe(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.yaml").write_text("solver:\n  lr: 0.5\n  steps: [3]\nsampler:\n  method: heuristic\n")
    (tmp_path / "bases" / "mid.yaml").write_text("base: root.yaml\nsolver:\n  iterations: 9\n")
    (tmp_path / "recipe.yaml").write_text("base: bases/mid.yaml\nsolver:\n  lr: 0.1\n")
    cfg = load_config(tmp_path / "recipe.yaml")
    assert (cfg.solver.lr, cfg.solver.steps, cfg.solver.iterations) == (0.1, [3], 9)
    assert cfg.sampler.method == "heuristic"
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="'base' chain loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "gone.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: cannot read"):
        load_config(tmp_path / "gone.yaml")


def test_choices_are_checked_by_the_loader_and_by_hand_built_configs():
    with pytest.raises(ConfigError, match=r"'train.eval_metric' must be one of voc, voc07, coco, got 'map'"):
        load_config(None, ["train.eval_metric=map"])
    with pytest.raises(ConfigError, match="sampler.mining_loss: expected one of cls\\+box, cls, got 'box'"):
        SamplerConfig(mining_loss="box")
    assert SamplerConfig(readonly_precision="bf16").readonly_precision == "bf16"
    with pytest.raises(ConfigError, match="sampler.readonly_precision: expected one of fp32, tf32, bf16, fp16"):
        SamplerConfig(readonly_precision="bfloat16")
    with pytest.raises(ConfigError, match="readonly_dtype"):  # renamed readonly_precision: no silent ignore
        load_config(None, ["sampler.readonly_dtype=bfloat16"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["solver.steps=[1"])


def test_bg_iou_low_default_depends_on_the_method_and_is_resolved_in_one_place():
    from ohem.mining import build_sampler

    assert build_sampler(SamplerConfig()).bg_iou_low == 0.0  # OHEM: every RoI is a candidate
    assert build_sampler(SamplerConfig(method="heuristic")).bg_iou_low == 0.1  # Fast R-CNN's bg_lo
    assert build_sampler(SamplerConfig(method="heuristic", bg_iou_low=0.0)).bg_iou_low == 0.0
    assert SamplerConfig().bg_iou_low is None  # written to config.yaml unresolved


def test_importing_the_package_and_cli_loads_no_plotting_or_tensorboard():
    import subprocess
    import sys

    heavy = "('matplotlib', 'tensorboard')"
    code = f"import sys, ohem, ohem.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
