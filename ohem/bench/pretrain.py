"""What ties a bench folder to ``--pretrain``: ``OUT/pretrain`` is trained once from one config, and
every run starts from the checkpoint it left. ``bench.json`` records that config (``pretrain``) and the
checkpoint's SHA-256 (``pretrain_sha256``): a rerun with another ``--pretrain``, or a checkpoint replaced
since, is refused rather than mixed into the same rows. The weights' path is recorded relative to
``OUT`` (``PRETRAINED_AS``), so a folder resumes from another current folder and after it is moved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ohem.bench.spec import Bench
from ohem.bench.state import first_difference
from ohem.config import Config, ConfigError, config_from_dict, load_config
from ohem.util import file_sha256

PRETRAINED_AS = "OUT/pretrain/checkpoint_last.pt"  # bench.json's model.init_weights with --pretrain


def plain(cfg: Config) -> dict[str, Any]:
    """A config as the JSON ``bench.json`` holds."""
    return json.loads(json.dumps(cfg.to_dict()))


def filled(values: Any, source: str) -> dict[str, Any]:
    """A config ``bench.json`` recorded, every key it lacks at its default (a key added since had its default
    then; a folder of 0.1's flat sampler section is translated), as JSON."""
    try:
        return plain(config_from_dict(values if isinstance(values, dict) else {}, source))
    except ConfigError as e:
        raise ValueError(f"{e} (this folder's config; use another --out)") from None


def recorded_values(b: Bench, base: Config) -> dict[str, Any]:
    """``bench.json``'s ``values``: the config, its start from ``OUT/pretrain`` written relative to ``OUT``."""
    values = plain(base)
    if b.pretrain:
        values["model"]["init_weights"] = PRETRAINED_AS
    return values


def stored_values(stored: dict[str, Any]) -> dict[str, Any]:
    """``bench.json``'s ``values``; a folder written before ``PRETRAINED_AS`` holds the weights' path as
    given then (absolute, or relative to that call's folder)."""
    values = stored.get("values", {})
    model = values.get("model")
    if not isinstance(model, dict):
        return values
    weights = model.get("init_weights")
    ours = isinstance(weights, str) and Path(weights).parts[-2:] == ("pretrain", "checkpoint_last.pt")
    if "pretrain" in stored and ours:
        values = {**values, "model": {**model, "init_weights": PRETRAINED_AS}}
    return values


def current_pretrain(b: Bench) -> dict[str, Any]:
    """What ``bench.json`` records of ``--pretrain``: its config, and the checkpoint's hash recorded earlier."""
    return {"pretrain": plain(load_config(b.pretrain_file))} if b.pretrain_file else {}


def check_pretrain_settings(b: Bench, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """The same ``--pretrain`` config as the folder's runs started from (or none, as they did); carries the
    recorded checkpoint hash over into ``current``."""
    where = b.out / "pretrain"
    if "pretrain" not in stored and b.pretrain:
        raise ValueError(
            f"--pretrain {b.pretrain}: the runs in {b.out} started without pretrained weights (no --pretrain); "
            "use another --out"
        )
    if "pretrain" in stored and not b.pretrain:
        raise ValueError(
            f"{b.out / 'bench.json'}: this folder's runs start from {where} (--pretrain); give the --pretrain "
            "config it was trained from, or use another --out"
        )
    if not b.pretrain:
        return
    key = first_difference(filled(stored["pretrain"], f"{b.out / 'bench.json'}: pretrain"), current["pretrain"])
    if key:
        raise ValueError(
            f"--pretrain {b.pretrain}: {where} was trained from another config ({key} differs); use another --out"
        )
    if isinstance(stored.get("pretrain_sha256"), str):
        current["pretrain_sha256"] = stored["pretrain_sha256"]


def check_pretrained(b: Bench, settings: dict[str, Any]) -> bool:
    """``OUT/pretrain``'s checkpoint is the one the folder's runs started from: the hash ``settings``
    records, else (a finished pretraining not yet recorded) recorded now. True when recorded now."""
    if not b.pretrain:
        return False
    recorded = settings.get("pretrain_sha256")
    if recorded is None:
        if not (b.pretrained.parent / "metrics.json").is_file() or not b.pretrained.is_file():
            return False  # not trained yet (or stopped): the pretrain phase trains it
        settings["pretrain_sha256"] = file_sha256(b.pretrained)
        return True
    if not b.pretrained.is_file():
        raise ValueError(
            f"{b.pretrained}: missing; this folder's runs started from the checkpoint bench.json records "
            f"(sha256 {recorded[:12]}...); put it back, or use another --out"
        )
    found = file_sha256(b.pretrained)
    if found != recorded:
        raise ValueError(
            f"{b.pretrained}: not the checkpoint --pretrain trained (sha256 {found[:12]}..., bench.json records "
            f"{recorded[:12]}...); this folder's runs started from that one: use another --out"
        )
    return False
