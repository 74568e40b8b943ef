"""Recipe cards (ohem/recipe_card.py, `ohem recipe`): docs/RECIPES.md is current, one changed setting
shows in exactly its row, reasons are not differences, and the CLI's output and --check exit code."""

import pytest

from ohem.cli import main
from ohem.config import load_config
from ohem.recipe_card import (
    DOC,
    REGENERATE,
    card_for_file,
    cards_section,
    kind_from_name,
    recipe_card,
    recipe_kind,
    render_all_cards,
)
from ohem.recipes import PAPER_DIR

PAPER = PAPER_DIR
# Every setting at its source's value, whatever the recipes say today: the cards of these configs
# must read "same" (or "n/a" with a reason) everywhere.
COMMON = [
    "data.max_proposals=null",
    "data.hflip=true",
    "model.box_loss_beta=1.0",
    "model.box_target_norm=empirical",
    "model.box_nms_thresh=0.3",
    "model.backbone_weights=imagenet",
    "model.pixel_scale=1.0",
    "model.channel_order=RGB",
    "model.image_mean=null",
    "model.image_std=null",
    "model.min_size=600",
    "model.max_size=1000",
    "model.test_min_size=null",
    "solver.lr=0.001",
    "solver.warmup_iterations=0",
    "solver.momentum=0.9",
    "solver.weight_decay=0.0005",
    "solver.bias_lr_factor=2.0",
    "solver.gamma=0.1",
    "solver.images_per_batch=2",
    "solver.accumulate_steps=1",
    "sampler.batch_size_per_image=64",
]
OHEM = [
    "sampler.method=ohem",
    "sampler.bg_iou_low=0.0",
    "sampler.nms_iou=0.7",
    "sampler.nms_per_label=true",
    "sampler.mining_loss=cls+box",
    "sampler.readonly_dropout=true",
    "data.aspect_grouping=false",
    "solver.bias_weight_decay=0.0",
    "solver.bias_weight_decay_on=roi_heads",
    "model.box_detections_per_img=2000",
    "model.box_score_thresh=0.00001",
]
HEURISTIC = [
    "sampler.method=heuristic",
    "sampler.fg_fraction=0.25",
    "sampler.bg_iou_low=0.1",
    "data.aspect_grouping=true",
    "solver.bias_weight_decay=null",
    "model.box_detections_per_img=100",
    "model.box_score_thresh=0.05",
]
SCHEDULE = {
    "voc07": ["solver.iterations=40000", "solver.steps=[30000]"],
    "voc0712": ["solver.iterations=80000", "solver.steps=[30000, 60000]"],
    "voc12": [],
}


def fixed(recipe: str) -> list[str]:
    """Overrides that put ``recipe`` (a single-scale VGG16 VOC recipe) at its sources' values."""
    method = OHEM if "_ohem" in recipe else HEURISTIC
    return COMMON + method + SCHEDULE[recipe.split("_")[0]]


def statuses(card):
    return {row.setting: row.status for row in card.rows}


def test_docs_cards_are_current():
    text = DOC.read_text()
    assert cards_section(text) == render_all_cards(), (
        f"docs/RECIPES.md's recipe cards differ from the recipes in ohem/configs/paper/: regenerate them with "
        f"`{REGENERATE}` (or paste the output of ohem.recipe_card.render_all_cards())"
    )


@pytest.mark.parametrize(
    "recipe", ["voc07_vgg16_ohem", "voc07_vgg16_fast_rcnn", "voc0712_vgg16_ohem", "voc12_vgg16_ohem"]
)
def test_a_config_at_the_sources_values_reads_same(recipe):
    card = card_for_file(PAPER / f"{recipe}.yaml", fixed(recipe))
    assert card.different == []
    reasons = {s for s, status in statuses(card).items() if status.startswith("n/a")}
    # proposal files: not decidable from a config; VOC12: the server's test set, no schedule in any source
    assert reasons == ({"proposals"} | ({"train data", "test data", "schedule"} if "voc12" in recipe else set()))


@pytest.mark.parametrize(
    "recipe, change, row",
    [
        ("voc07_vgg16_ohem", "sampler.nms_per_label=false", "mining NMS per label"),
        ("voc07_vgg16_ohem", "model.box_loss_beta=0.1111111111111111", "smooth-L1 beta"),
        ("voc07_vgg16_ohem", "solver.bias_weight_decay_on=all", "bias decay"),
        ("voc07_vgg16_ohem", "model.box_detections_per_img=100", "test detections"),
        ("voc07_vgg16_ohem", "model.channel_order=BGR", "input"),
        ("voc07_vgg16_ohem", "sampler.readonly_dropout=false", "dropout"),
        ("voc07_vgg16_ohem", "solver.accumulate_steps=2", "images per step N"),
        ("voc07_vgg16_ohem", "data.max_proposals=2000", "proposals per image"),
        ("voc07_vgg16_fast_rcnn", "data.aspect_grouping=false", "aspect grouping"),
        ("voc07_vgg16_fast_rcnn", "solver.bias_weight_decay=0.0", "bias decay"),
        ("voc07_vgg16_fast_rcnn", "model.box_target_norm=fixed", "box target normalisation"),
        ("voc0712_vgg16_ohem", "solver.steps=[30000]", "schedule"),
    ],
)
def test_one_changed_setting_shows_in_exactly_its_row(recipe, change, row):
    before = statuses(card_for_file(PAPER / f"{recipe}.yaml", fixed(recipe)))
    after = statuses(card_for_file(PAPER / f"{recipe}.yaml", [*fixed(recipe), change]))
    assert [s for s in after if after[s] != before[s]] == [row]
    assert after[row] == "different"


def test_a_hand_made_config_file(tmp_path):
    """A YAML file on top of a recipe, named like it: its one change is its card's one difference."""
    recipe = PAPER / "voc07_vgg16_ohem.yaml"
    settings = {}
    for item in fixed("voc07_vgg16_ohem"):
        key, value = item.split("=", 1)
        section, name = key.split(".")
        settings.setdefault(section, {})[name] = value
    settings["sampler"]["nms_per_label"] = "false"
    lines = [f"base: {recipe}"]
    for section, values in settings.items():
        lines += [f"{section}:"] + [f"  {name}: {value}" for name, value in values.items()]
    path = tmp_path / "voc07_vgg16_ohem.yaml"
    path.write_text("\n".join(lines) + "\n")
    card = card_for_file(path)
    assert [r.setting for r in card.different] == ["mining NMS per label"]
    row = next(r for r in card.rows if r.setting == "mining NMS per label")
    assert (row.config, row.expected, row.status) == ("false", "true", "different")
    assert "minibatch.py" in row.source


def test_kind_comes_from_the_values_and_is_checked_against_the_name(tmp_path):
    assert kind_from_name("voc07_vgg16_ohem_mb").describe() == "Fast R-CNN + OHEM, VOC07 (train 07), VGG16 +M +B"
    assert kind_from_name("voc07_vgg16_ohem_1img_accum2") == kind_from_name("voc07_vgg16_ohem")
    assert kind_from_name("demo") is None
    cfg = load_config(PAPER / "voc07_vgg16_ohem.yaml", ["sampler.method=heuristic"])
    kind = recipe_kind(cfg)
    assert (kind.method, kind.dataset, kind.net, kind.multiscale, kind.voting) == ("heuristic", "voc07", "vgg16", 0, 0)
    card = recipe_card(cfg, "by hand", "voc07_vgg16_ohem")
    assert statuses(card)["kind"] == "different"  # the name promises OHEM, the values say Fast R-CNN
    assert "mining NMS" not in statuses(card)  # rows of the OHEM sampler only
    assert statuses(recipe_card(cfg, "by hand", "my_config"))["kind"].startswith("n/a")
    mb = recipe_kind(load_config(PAPER / "voc07_vgg16_ohem_mb.yaml"))
    assert (mb.multiscale, mb.voting) == (True, True)


def test_reasons_are_not_differences():
    card = card_for_file(PAPER / "coco_vgg16_ohem.yaml", ["data.test_split=val2017"])
    row = next(r for r in card.rows if r.setting == "test data")
    assert row.status == "n/a: COCO test-dev is scored only by the evaluation server"
    assert row not in card.different


@pytest.mark.parametrize(
    "weights, normalisation, status",
    [
        ("imagenet", [], "same"),
        (
            "imagenet",
            [
                "model.channel_order=BGR",
                "model.pixel_scale=255",
                "model.image_mean=[102.9801, 115.9465, 122.7717]",
                "model.image_std=[1, 1, 1]",
            ],
            "different",
        ),
        (
            "w.pt",
            [
                "model.channel_order=BGR",
                "model.pixel_scale=255",
                "model.image_mean=[102.9801, 115.9465, 122.7717]",
                "model.image_std=[1, 1, 1]",
            ],
            "same",
        ),
        (
            "w.pt",
            ["model.image_mean=[0.48146, 0.45469, 0.40384]", "model.image_std=[0.00392157, 0.00392157, 0.00392157]"],
            "same",
        ),  # conv1 flipped to RGB: Caffe's mean / 255, std 1/255
        ("w.pt", [], "different"),  # a Caffe model fed torchvision's normalisation
    ],
)
def test_the_input_row_pairs_the_normalisation_with_the_weights(weights, normalisation, status):
    overrides = [*fixed("voc07_vgg16_ohem"), f"model.backbone_weights={weights}", *normalisation]
    got = statuses(card_for_file(PAPER / "voc07_vgg16_ohem.yaml", overrides))["input"]
    assert got.split(":")[0] == status, got


def test_cli_prints_the_card_and_check_sets_the_exit_code(capsys):
    path = str(PAPER / "voc07_vgg16_ohem.yaml")
    sets = [arg for item in fixed("voc07_vgg16_ohem") for arg in ("--set", item)]
    assert main(["recipe", path, *sets, "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### `voc07_vgg16_ohem --set ")
    assert "| setting | key(s) | this config | paper / authors' code | source | match |" in out
    assert "| mining NMS per label | `sampler.nms_per_label` | true | true |" in out
    assert "| different" not in out
    assert main(["recipe", path, *sets, "--set", "sampler.nms_per_label=false"]) == 0  # without --check: 0
    assert "| mining NMS per label | `sampler.nms_per_label` | false | true |" in capsys.readouterr().out
    assert main(["recipe", path, *sets, "--set", "sampler.nms_per_label=false", "--check"]) == 1
    captured = capsys.readouterr()
    assert "| different |" in captured.out
    assert "1 setting(s) differ from the source: mining NMS per label" in captured.err
    assert main(["recipe", str(PAPER / "voc12_vgg16_ohem.yaml"), *sets, "--check"]) == 0  # n/a rows pass
    assert main(["recipe", str(PAPER / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
