import dataclasses
import math
import sys
import typing
from typing import Any, Literal

import pytest
import yaml

from ohem.config import (
    SECTIONS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    SolverConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_yaml,
    shown,
)
from ohem.config_sections import RENAMED
from ohem.engine.run_folder import RESUME_MAY_CHANGE, RunFolderError, check_resume_config
from ohem.recipes import CONFIGS_DIR, recipe_paths
from tests.conftest import builtin_methods


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  lr: 0.05\n  steps: [10, 20]\n  warmup_iterations: 5\nsampler:\n  method: heuristic\n")
    cfg = load_config(path, ["solver.lr=0.1", "sampler.bg_iou_low=0.2", "solver.iterations=7", "solver.momentum=1e-1"])
    assert cfg.solver.lr == 0.1 and cfg.solver.steps == [10, 20] and cfg.solver.iterations == 7
    assert cfg.sampler.method == "heuristic" and cfg.sampler.bg_iou_low == 0.2
    assert cfg.solver.momentum == 0.1  # 1e-1: a number (YAML 1.1 alone reads it as a string)
    assert cfg.model == Config().model  # untouched sections keep their defaults


def test_int_is_accepted_for_float_but_not_the_reverse():
    cfg = load_config(None, ["solver.lr=1"])
    assert cfg.solver.lr == 1.0 and isinstance(cfg.solver.lr, float)
    with pytest.raises(ConfigError, match=r"solver.iterations must be an integer in \[1, 1000000000\], got 1.5$"):
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
    with pytest.raises(ConfigError, match=r"train.eval_metric must be one of voc, voc07, coco, got 'map'$"):
        load_config(None, ["train.eval_metric=map"])
    with pytest.raises(ConfigError, match=r"sampler.mining_loss must be one of cls\+box, cls, got 'box'$"):
        load_config(None, ["sampler.mining_loss=box"])
    assert load_config(None, ["sampler.readonly_precision=bf16"]).sampler.readonly_precision == "bf16"
    with pytest.raises(ValueError, match="'fp32', 'tf32', 'bf16' or 'fp16'"):  # built in Python: pydantic's words
        type(Config().sampler)(readonly_precision="bfloat16")
    with pytest.raises(ConfigError, match="readonly_dtype"):  # renamed readonly_precision: no silent ignore
        load_config(None, ["sampler.readonly_dtype=bfloat16"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["solver.steps=[1"])


def test_bg_iou_low_default_is_each_samplers_own():
    assert load_config(None).sampler.bg_iou_low == 0.0  # OHEM: every RoI is a candidate
    assert load_config(None, ["sampler.method=heuristic"]).sampler.bg_iou_low == 0.1  # Fast R-CNN's bg_lo
    assert load_config(None, ["sampler.method=heuristic", "sampler.bg_iou_low=0"]).sampler.bg_iou_low == 0.0


def test_importing_the_package_and_cli_loads_no_plotting_or_tensorboard():
    import subprocess
    import sys

    heavy = "('matplotlib', 'tensorboard')"
    code = f"import sys, ohem, ohem.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def numeric_fields() -> list[tuple[str, type, str]]:
    """(section name, class, field) of every numeric field of every section and every built-in sampler (not
    those another test module registered when it was collected)."""
    from ohem.mining.sampler import SAMPLERS

    classes = [(name, cls) for name, cls in SECTIONS.items() if cls is not None]
    classes += [("sampler", SAMPLERS[method]) for method in builtin_methods()]
    found = []
    for name, cls in classes:
        for f in dataclasses.fields(cls):
            info = cls.__pydantic_fields__[f.name]
            if any(t in (int, float) for t in _leaf_types(info.annotation)):
                found.append((name, cls, f.name))
    return found


def _leaf_types(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal or not args:
        return [annotation]
    return [leaf for a in args for leaf in _leaf_types(a)]


def _bounds(cls: type, name: str) -> dict[str, Any]:
    """The field's ge/gt/le/lt, wherever in its type they are written (the field, or a list's items)."""
    found: dict[str, Any] = {}

    def walk(annotation: Any, metadata: list[Any]) -> None:
        for m in metadata:
            for part in getattr(m, "metadata", [m]):
                for bound in ("ge", "gt", "le", "lt"):
                    if getattr(part, bound, None) is not None:
                        found.setdefault(bound, getattr(part, bound))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Annotated:
            walk(args[0], list(args[1:]))
        else:
            for a in args if origin is not Literal else ():
                walk(a, [])

    info = cls.__pydantic_fields__[name]
    walk(info.annotation, list(info.metadata))
    return found


@pytest.mark.parametrize(("section", "cls", "name"), numeric_fields(), ids=lambda v: getattr(v, "__name__", v))
def test_every_numeric_field_has_a_range_and_refuses_what_is_outside_in_one_line(section, cls, name):
    bounds = _bounds(cls, name)
    assert ("ge" in bounds or "gt" in bounds) and ("le" in bounds or "lt" in bounds), f"{section}.{name}: no range"
    method = [f"sampler.method={cls.method}"] if section == "sampler" else []
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    for value in (low - 1, high + 1, float("nan"), float("inf")):
        text = {math.inf: ".inf"}.get(value, ".nan" if math.isnan(value) else repr(value))
        only_list = name in ("image_mean", "image_std", "steps")  # lists of numbers, never one number
        text = f"[{text}, {text}, {text}]" if only_list else text
        with pytest.raises(ConfigError) as error:
            load_config(None, [*method, f"{section}.{name}={text}"])
        message = str(error.value)
        assert "\n" not in message and f"{section}.{name}" in message, message
        assert message.startswith(f"override '{section}.{name}={text}': "), message


def test_a_section_built_in_python_is_held_to_the_same_rules():
    with pytest.raises(ValueError, match="less than or equal to 1"):
        SolverConfig(momentum=1.5)
    with pytest.raises(ValueError, match="valid integer"):
        SolverConfig(iterations=1.5)
    with pytest.raises(ValueError, match="valid boolean"):
        DataConfig(hflip="false")  # a truthy string is not a bool
    with pytest.raises(ValueError, match="Unexpected keyword argument"):
        DataConfig(nope=1)


def test_sampler_section_is_the_chosen_sampler_with_its_own_keys(tmp_path):
    cfg = load_config(None, ["sampler.method=libra", "sampler.bins=5"])
    assert type(cfg.sampler).method == "libra" and cfg.sampler.bins == 5
    assert cfg.to_dict()["sampler"]["method"] == "libra" and config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ConfigError, match=r"^override 'sampler.bins=5': unknown key 'sampler.bins' \(sampler ohem's keys"
    ):
        load_config(None, ["sampler.bins=5"])
    with pytest.raises(ConfigError, match=r"^override 'sampler.bins=0': sampler.bins must be an integer in \[1, 100\]"):
        load_config(None, ["sampler.method=libra", "sampler.bins=0"])
    # a later method keeps the keys the new sampler has too, and drops the others
    path = tmp_path / "c.yaml"
    path.write_text("sampler:\n  method: ohem\n  nms_iou: 0.5\n  batch_size_per_image: 32\n")
    heuristic = load_config(path, ["sampler.method=heuristic"]).sampler
    assert heuristic.batch_size_per_image == 32 and heuristic.bg_iou_low == 0.1  # heuristic's own default
    with pytest.raises(ConfigError, match=r"sampler.method must be one of ohem|heuristic.*, got 'nope'$"):
        load_config(None, ["sampler.method=nope"])


def test_keys_of_the_flat_sampler_section_name_their_new_home():
    for old, new in RENAMED.items():
        with pytest.raises(ConfigError, match=rf"^override 'sampler.{old}=1': sampler.{old} is now {new} "):
            load_config(None, [f"sampler.{old}=1"])
    recorded = {"sampler": {"method": "libra", "libra_bins": 5, "nms_iou": 0.7, "rpn_ohem": True, "ohem_start": 0}}
    cfg = config_from_dict(recorded)  # a checkpoint of 0.1: translated
    assert (cfg.sampler.bins, cfg.model.rpn_ohem) == (5, True)


def test_imports_register_your_own_sampler_and_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "my_cfg_sampler.py").write_text(
        "from typing import Annotated\n"
        "from pydantic import Field\n"
        "import ohem\n"
        "from ohem.mining.sampler import random_fg_bg\n\n"
        "@ohem.register_sampler('my-cfg-sampler')\n"
        "class Mine(ohem.SamplerBase):\n"
        "    k: Annotated[int, Field(ge=1, le=10)] = 2\n"
        "    def sample(self, rois, losses, iteration):\n"
        "        return ohem.Sample(random_fg_bg(rois, self.k, self.fg_fraction))\n"
    )
    (tmp_path / "c.yaml").write_text("imports: [my_cfg_sampler]\nsampler: {method: my-cfg-sampler, k: 3}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.sampler.k == 3 and cfg.imports == ["my_cfg_sampler"]
    assert config_from_dict(cfg.to_dict()).sampler == cfg.sampler
    with pytest.raises(
        ConfigError, match=r"^override 'sampler.k=11': sampler.k must be an integer in \[1, 10\], got 11$"
    ):
        load_config(tmp_path / "c.yaml", ["sampler.k=11"])
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(
        ConfigError, match=r"^override 'imports=\[broken_mod\]': imports: broken_mod: RuntimeError: boom$"
    ):
        load_config(None, ["imports=[broken_mod]"])
    (tmp_path / "twice_mod.py").write_text(
        (tmp_path / "my_cfg_sampler.py").read_text().replace("class Mine", "class Other")
    )
    with pytest.raises(ConfigError, match=r"imports: twice_mod: ValueError: register_sampler: 'my-cfg-sampler' is"):
        load_config(None, ["imports=[twice_mod]"])


def test_a_range_error_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampler:\n  fg_fraction: 1.5\n")
    with pytest.raises(
        ConfigError, match=r"^config .*c\.yaml: sampler\.fg_fraction must be a finite number in \[0, 1\], got 1\.5$"
    ):
        load_config(path)


def test_lists_are_checked_number_by_number_and_steps_must_increase():
    with pytest.raises(ConfigError, match=r"^override 'model.min_size=\[\]': model.min_size must be .*non-empty"):
        load_config(None, ["model.min_size=[]"])
    with pytest.raises(ConfigError, match=r"model\.test_min_size\[1\] must be an integer in \[1, 100000\], got 0$"):
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
    with pytest.raises(ValueError, match=r"model\.min_size = 600 must be <= model\.max_size = 160 "):
        ModelConfig(min_size=600)  # by hand: at once
    assert ModelConfig(min_size=600, max_size=1000).min_size == 600
    with pytest.raises(ConfigError, match=r"^override 'model\.max_size=800': model\.min_size\[1\] = 900 must be <= "):
        load_config(None, ["model.min_size=[128, 900]", "model.max_size=800"])  # the override that broke it
    # an override may fix what an earlier one (or the file) set: the rule waits for the last one
    assert load_config(None, ["model.min_size=600", "model.max_size=1000"]).model.min_size == 600


def test_warmup_may_not_outlast_the_run():
    with pytest.raises(ValueError, match=r"solver\.warmup_iterations = 100 must be <= solver\.iterations = 50 "):
        SolverConfig(iterations=50)
    assert SolverConfig(iterations=100).warmup_iterations == 100  # a run may end where its warm-up does
    with pytest.raises(ConfigError, match=r"^override 'solver\.iterations=50': solver\.warmup_iterations = 100"):
        load_config("demo", ["solver.iterations=50"])
    assert load_config("demo", ["solver.iterations=50", "solver.warmup_iterations=5"]).solver.iterations == 50
    negative = r"^override 'solver\.steps=\[-1\]': solver\.steps\[0\] must be an integer in \[0, 1000000000\], got -1$"
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
