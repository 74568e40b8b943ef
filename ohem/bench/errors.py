"""The error phase's worker: what one finished run's detector gets wrong on its test split.

    python -m ohem.bench.errors '{"run_dir": ..., "score": 0.5, "result": ...}'

Loads the run's ``checkpoint_last.pt`` and its config, detects on the config's test split as the
run's own evaluation does (test-time options, batch size, loader workers, device, threads; Fast
R-CNN reads its test proposals), and sorts the detections scoring at least ``score`` into the kinds
of ``ohem.evaluation.errors`` (TP, difficult, look-alike, duplicate, wrong class, mislocalized,
background, missed). Writes the counts, summed over the images, to ``result`` as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ohem.util import atomic_open

CHECKPOINT = "checkpoint_last.pt"


def run_errors(run_dir: str | Path, score: float) -> dict[str, int]:
    """Counts of each kind over the test split of ``run_dir``'s config, from its last checkpoint."""
    import torch

    from ohem.data import build_dataset
    from ohem.data.loader import loader_workers
    from ohem.engine.trainer import resolve_device
    from ohem.evaluation import count_errors
    from ohem.inference import TestTime, model_from_checkpoint, predict

    model, cfg, _ = model_from_checkpoint(Path(run_dir) / CHECKPOINT, torch.device("cpu"))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    model = model.to(device)
    dataset = build_dataset(cfg.data, "test")
    test_time, workers = TestTime.from_config(cfg.model), loader_workers(cfg.data.workers)
    detections = predict(model, dataset, device, cfg.test.images_per_batch, test_time=test_time, workers=workers)
    return count_errors(detections, [image_annotations(dataset, i) for i in range(len(dataset))], score)


def image_annotations(dataset: Any, index: int) -> dict:
    """Image ``index``'s target, without reading its pixels where the data set can (as the scoring does)."""
    return dataset.annotations(index) if hasattr(dataset, "annotations") else dataset[index][1]


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    counts = run_errors(spec["run_dir"], spec["score"])
    with atomic_open(spec["result"]) as f:
        f.write(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
