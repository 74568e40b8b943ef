"""A sampler of your own, in your own folder: trained by ``ohem train`` through a config's ``imports:``,
compared by ``ohem bench`` from an arm file, its settings held to their ranges like a built-in's."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from ohem.cli import main
from tests.conftest import TINY

SAMPLER = '''"""Half the batch: the RoIs of highest read-only loss; the other half at random."""
from typing import Annotated

import torch
from pydantic import Field

import ohem
from ohem.mining import ReadOnlyPassSampler, each_image, random_subset


@ohem.register_sampler("my-half-hard")
class HalfHard(ReadOnlyPassSampler):
    hard_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    """the share of each image's batch that is the hardest RoIs"""

    def sample(self, rois, losses, iteration):
        loss = losses.cls + losses.box

        def pick(rows):
            hard = rows[loss[rows].argsort(descending=True)[: int(self.batch_size_per_image * self.hard_share)]]
            rest = rows[~torch.isin(rows, hard)]
            return torch.cat([hard, random_subset(rest, self.batch_size_per_image - hard.numel())])

        return ohem.Sample(each_image(rois, pick))
'''


@pytest.fixture
def own_folder(tmp_path, monkeypatch):
    """A folder holding the user's sampler module, a config that imports it and an arm file; the cwd."""
    (tmp_path / "my_half_hard.py").write_text(SAMPLER)
    (tmp_path / "my.yaml").write_text(
        "base: " + str(Path(__file__).resolve().parent.parent / "ohem" / "configs" / "demo.yaml") + "\n"
        "imports: [my_half_hard]\n"
        "sampler: {method: my-half-hard, batch_size_per_image: 16, hard_share: 0.5}\n"
    )
    (tmp_path / "quarter.yaml").write_text(
        "# my sampler, a quarter hard\nsampler: {method: my-half-hard, hard_share: 0.25}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("my_half_hard", None)


def test_ohem_train_runs_your_sampler_from_a_config_that_imports_it(own_folder):
    sets = [a for item in TINY if not item.startswith("sampler.") for a in ("--set", item)]
    assert main(["train", "--config", "my.yaml", "--out", "run", *sets]) == 0
    lines = (own_folder / "run" / "log.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"loss_classifier"' in line]) == 4  # every step trained
    assert "my-half-hard" in (own_folder / "run" / "config.yaml").read_text()


def test_an_out_of_range_setting_of_your_sampler_names_its_key(own_folder, capsys):
    assert main(["train", "--config", "my.yaml", "--out", "run", "--set", "sampler.hard_share=2"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "ohem train: error: override 'sampler.hard_share=2': sampler.hard_share must be a finite number "
        "in [0, 1], got 2\n"
    )
    assert not (own_folder / "run").exists()


def test_ohem_bench_compares_your_sampler_from_an_arm_file(own_folder, capsys):
    args = ["bench", "--config", "my.yaml", "--arms", "heuristic,quarter.yaml", "--out", "b"]
    args += ["--cost-iters", "2", "--cost-repeats", "1", "--no-errors"]
    args += [a for item in [*TINY, "train.eval_every=2"] for a in ("--set", item) if not item.startswith("sampler.")]
    assert main(args) == 0
    rows = list(csv.DictReader((own_folder / "b" / "accuracy.csv").open()))
    assert [r["arm"] for r in rows] == ["heuristic", "quarter"]
    assert "- **quarter**: my sampler, a quarter hard" in (own_folder / "b" / "summary.md").read_text()
    capsys.readouterr()
    assert main(["bench", "--list-arms", "--arms", "quarter.yaml"]) == 0
    listed = capsys.readouterr().out
    assert "quarter" in listed and 'sets sampler.method="my-half-hard" sampler.hard_share=0.25' in listed


def test_recipe_check_reads_a_config_with_your_sampler(own_folder, capsys):
    main(["recipe", "my.yaml"])
    out = capsys.readouterr().out
    assert "my-half-hard" in out
