import dataclasses
import math
import typing
from typing import Any

import pytest
import yaml

from ohem.config import (
    Config,
    ConfigError,
    ModelConfig,
    Range,
    SamplerConfig,
    SolverConfig,
    _is_union,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_yaml,
    shown,
)
from ohem.engine.run_folder import RESUME_MAY_CHANGE, RunFolderError, check_resume_config
from ohem.recipes import CONFIGS_DIR, recipe_paths


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  lr: 0.05\n  steps: [10, 20]\n  warmup_iterations: 5\nsampler:\n  method: heuristic\n")
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
    (tmp_path / "bases" / "root.yaml").write_text(
        "solver:\n  lr: 0.5\n  steps: [3]\n  warmup_iterations: 0\nsampler:\n  method: heuristic\n"
    )
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


def ranged_fields() -> list[tuple[type, str, Range]]:
    """(section class, field name, range) of every range-checked field of every section."""
    sections = [type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)]
    return [(s, f.name, f.metadata["range"]) for s in sections for f in dataclasses.fields(s) if "range" in f.metadata]


def only_lists(hint: Any) -> bool:
    """Whether a field of type ``hint`` holds a list of numbers and never one number."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    return all(typing.get_origin(a) is list for a in options)


def out_of_range(r: Range) -> list[float]:
    """Values ``r`` refuses: just below, just above, and not finite."""
    values: list[float] = [float("nan"), float("inf")]
    if r.low is not None:
        values.append(r.low - 1)
    if r.high is not None:
        values.append(r.high + 1)  # an int field takes int(value): still above
    return values


def test_the_checks_that_used_to_live_in_train_and_cli_are_ranges_of_the_config():
    keys = {f"{s.SECTION}.{name}" for s, name, _ in ranged_fields()}
    required = {
        "sampler.batch_size_per_image",
        "sampler.ohem_start",
        "sampler.fg_fraction",
        "sampler.nms_iou",
        "sampler.bg_iou_low",
        "sampler.rpn_nms_iou",
        "model.box_nms_thresh",
        "model.min_size",
        "model.max_size",
        "model.box_loss_beta",
        "data.workers",
        "data.num_train",
        "data.num_test",
        "data.max_image_pixels",
        "solver.images_per_batch",
        "solver.accumulate_steps",
        "solver.iterations",
        "solver.lr",
        "solver.weight_decay",
        "solver.gamma",
        "solver.momentum",
        "train.num_threads",
        "train.eval_every",
        "train.checkpoint_every",
        "train.mining_log_every",
        "train.check_sync_every",
        "train.vis_images",
        "train.roi_loss_images",
        "train.timing_every",
        "train.vis_score_thresh",
        "test.images_per_batch",
    }
    assert required <= keys, required - keys


@pytest.mark.parametrize(("section", "name", "valid"), ranged_fields(), ids=lambda v: getattr(v, "SECTION", v))
def test_every_range_checked_field_refuses_out_of_range_values_in_one_line(section, name, valid):
    key = f"{section.SECTION}.{name}"
    hint = typing.get_type_hints(section)[name]
    whole = hint is not float and float not in typing.get_args(hint)  # an int field
    # An int field is given ints (the range, not the type, refuses them; nan is not an int).
    for value in [int(v) for v in out_of_range(valid) if math.isfinite(v)] if whole else out_of_range(valid):
        text = {math.inf: ".inf"}.get(value, ".nan" if math.isnan(value) else repr(value))
        given: Any = [value] if only_lists(hint) else value  # model.image_mean: a list of numbers
        text = f"[{text}]" if only_lists(hint) else text
        with pytest.raises(ConfigError) as by_override:
            load_config(None, [f"{key}={text}"])
        with pytest.raises(ConfigError) as by_hand:
            section(**{name: given})
        for message, prefix in ((str(by_override.value), f"override '{key}={text}': "), (str(by_hand.value), "")):
            assert "\n" not in message
            assert message.startswith(f"{prefix}{key}") and repr(value) in message, message
            if math.isfinite(value):
                assert str(valid) in message, message


def test_a_range_error_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampler:\n  fg_fraction: 1.5\n")
    with pytest.raises(ConfigError, match=r"^config .*c\.yaml: sampler\.fg_fraction must be in \[0, 1\], got 1\.5$"):
        load_config(path)


def test_lists_are_checked_number_by_number_and_steps_must_increase():
    with pytest.raises(ConfigError, match=r"^override 'model.min_size=\[\]': model.min_size must be .*non-empty"):
        load_config(None, ["model.min_size=[]"])
    with pytest.raises(ConfigError, match=r"model\.test_min_size\[1\] must be in \[1, 100000\], got 0$"):
        load_config(None, ["model.test_min_size=[600, 0]"])
    with pytest.raises(ConfigError, match=r"^override 'solver.steps=\[6, 5\]': solver\.steps must be in increasing"):
        load_config(None, ["solver.steps=[6, 5]"])
    assert load_config(None, ["solver.steps=[]", "model.min_size=[480, 600]", "model.max_size=1000"]).solver.steps == []
    assert load_config(None, ["solver.steps=[1, 1]"]).solver.steps == [1, 1]  # a budget scaled down merges steps
    assert load_config(None, ["data.workers=null", "sampler.nms_iou=null"]).sampler.nms_iou is None  # None: off


def test_resume_may_change_exactly_the_fields_marked_so():
    assert set(RESUME_MAY_CHANGE) == {
        "solver.iterations",
        "train.eval_every",
        "train.checkpoint_every",
        "train.mining_log_every",
        "train.roi_loss_images",
        "train.vis_images",
        "train.vis_score_thresh",
        "train.num_threads",
        "train.keep_checkpoints",
        "train.device",
        "train.check_sync_every",
        "train.timing_every",
        "data.workers",
        "test.images_per_batch",
        "model.init_weights",  # not read on resume (run_folder, not a field's mark)
    }
    short = ["solver.warmup_iterations=0", "solver.iterations=10"]  # the warm-up fits in the run
    before = load_config(None, short)
    state = {"config": before.to_dict(), "iteration": 5}
    longer = [*short, "solver.iterations=20", "train.device=cpu", "data.workers=0"]
    check_resume_config(load_config(None, longer), state, "c")
    with pytest.raises(RunFolderError, match=r"^checkpoint c: solver\.lr: the run was trained with 0\.02, the config "):
        check_resume_config(load_config(None, [*short, "solver.lr=0.1"]), state, "c")


def test_min_size_above_max_size_is_refused_naming_both_keys_once_every_override_is_in():
    with pytest.raises(ConfigError, match=r"^model\.min_size = 600 must be <= model\.max_size = 160 "):
        ModelConfig(min_size=600)  # by hand: at once
    assert ModelConfig(min_size=600, max_size=1000).min_size == 600
    with pytest.raises(ConfigError, match=r"^override 'model\.max_size=800': model\.min_size\[1\] = 900 must be <= "):
        load_config(None, ["model.min_size=[128, 900]", "model.max_size=800"])  # the override that broke it
    # an override may fix what an earlier one (or the file) set: the rule waits for the last one
    assert load_config(None, ["model.min_size=600", "model.max_size=1000"]).model.min_size == 600


def test_warmup_may_not_outlast_the_run():
    with pytest.raises(ConfigError, match=r"^solver\.warmup_iterations = 100 must be <= solver\.iterations = 50 "):
        SolverConfig(iterations=50)
    assert SolverConfig(iterations=100).warmup_iterations == 100  # a run may end where its warm-up does
    with pytest.raises(ConfigError, match=r"^override 'solver\.iterations=50': solver\.warmup_iterations = 100"):
        load_config("demo", ["solver.iterations=50"])
    assert load_config("demo", ["solver.iterations=50", "solver.warmup_iterations=5"]).solver.iterations == 50
    negative = r"^override 'solver\.steps=\[-1\]': solver\.steps\[0\] must be >= 0, got -1$"
    with pytest.raises(ConfigError, match=negative):
        load_config(None, ["solver.steps=[-1]"])


def test_a_file_breaking_a_joint_rule_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  iterations: 10\n")
    with pytest.raises(ConfigError, match=r"^config .*c\.yaml: solver\.warmup_iterations = 100 must be <= "):
        load_config(path)
    assert load_config(path, ["solver.warmup_iterations=0"]).solver.iterations == 10


def test_a_checkpoints_config_is_not_held_to_joint_rules_added_since():
    raw = Config().to_dict()
    raw["solver"].update(iterations=10, warmup_iterations=100)
    assert config_from_dict(raw).solver.warmup_iterations == 100  # the run happened: eval may still read it


def test_synthetic_sizes_are_bounded_by_limits_that_null_lifts():
    with pytest.raises(ConfigError, match=r"data\.num_train = 1,000,000,000,000 images, more than data\.max_synthetic"):
        load_config(None, ["data.num_train=1000000000000"])
    lifted = load_config(None, ["data.max_synthetic_images=null", "data.num_train=1000000000000"])
    assert lifted.data.num_train == 10**12
    with pytest.raises(ConfigError, match=r"data\.image_size = 10,000 is 100,000,000 pixels .* data\.max_image_pixels"):
        load_config(None, ["data.image_size=10000"])
    assert load_config(None, ["data.image_size=10000", "data.max_image_pixels=null"]).data.image_size == 10000


def test_yaml_without_anchors_aliases_or_repeated_keys(tmp_path):
    assert parse_yaml("a: {b: 1, c: [1, 2]}\nd: x\n") == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    with pytest.raises(yaml.YAMLError, match=r"^line 2: anchors and aliases"):
        parse_yaml("a: 1\nb: &x [1]\nc: *x\n")
    with pytest.raises(yaml.YAMLError, match=r"^line 3: key 'b' repeats the one on line 2$"):
        parse_yaml("a:\n  b: 1\n  b: 2\n")
    assert parse_yaml("a: {1: x, '1': y}") == {"a": {1: "x", "1": "y"}}  # 1 and '1' are different keys
    for path in CONFIGS_DIR.rglob("*.yaml"):  # the shipped files share settings through base:, not anchors
        assert isinstance(parse_yaml(path.read_text()), dict), path
    for name in recipe_paths():  # and every recipe keeps to the joint rules
        load_config(name)


def test_messages_quote_long_values_in_part():
    assert shown("x" * 10) == repr("x" * 10)
    assert shown("x" * 1000) == repr("x" * 1000)[:80] + "... (1,002 characters)"
    assert shown(10**5000) == "an integer of 5,000 digits"
