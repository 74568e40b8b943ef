"""The input pipeline: worker processes give the batches, flips and errors of in-process loading."""

import json
import re

import pytest
import torch

from ohem.checkpoint import load_checkpoint
from ohem.config import apply_overrides
from ohem.data import SyntheticShapes, batch_indices, hflip
from ohem.data.loader import TrainBatches, eval_batches, flipped, train_loader
from ohem.engine import trainer as training
from ohem.inference import predict

CPU = torch.device("cpu")


def test_flips_are_a_fair_coin_of_seed_position_and_index():
    draws = [flipped(0, position, index) for position in range(100) for index in range(20)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert draws == [flipped(0, position, index) for position in range(100) for index in range(20)]  # no state
    other_seed = [flipped(1, position, index) for position in range(100) for index in range(20)]
    assert 0.3 < sum(a != b for a, b in zip(draws, other_seed)) / len(draws) < 0.7
    # the same image flips differently at different positions
    assert len({flipped(0, position, 3) for position in range(20)}) == 2


def test_ranks_share_each_batch_and_start_where_asked():
    batch_of = lambda position: batch_indices(position, 10, 4, seed=7)  # noqa: E731
    shares = [list(TrainBatches(batch_of, 3, 8, rank, 2)) for rank in range(2)]
    assert len(TrainBatches(batch_of, 3, 8)) == 5
    for k, position in enumerate(range(3, 8)):
        batch = batch_of(position)
        assert shares[0][k] == [(position, i) for i in batch[0::2]]
        assert shares[1][k] == [(position, i) for i in batch[1::2]]


def test_workers_give_the_in_process_batches_with_the_drawn_flips():
    data = SyntheticShapes("train", num_images=12, image_size=128)
    batch_of = lambda position: batch_indices(position, 12, 3, seed=5)  # noqa: E731
    inline = list(train_loader(data, TrainBatches(batch_of, 2, 9), 0, CPU, flip_seed=5))
    parallel = list(train_loader(data, TrainBatches(batch_of, 2, 9), 2, CPU, flip_seed=5))
    assert len(inline) == len(parallel) == 7
    seen_flips = set()
    for position, (a, b) in enumerate(zip(inline, parallel), start=2):
        assert a[0] == b[0] == batch_of(position)
        for k, index in enumerate(a[0]):
            image, target = data[index]
            if flipped(5, position, index):
                image, target = hflip(image, target)
            seen_flips.add(flipped(5, position, index))
            for got in (a, b):
                assert torch.equal(got[1][k], image)
                assert torch.equal(got[2][k]["boxes"], target["boxes"])
    assert seen_flips == {False, True}


class Corrupt(torch.utils.data.Dataset):
    """Image 3 cannot be read; ``error`` chooses how it fails."""

    def __init__(self, error):
        self.data, self.error = SyntheticShapes("test", num_images=6, image_size=128), error

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        if index == 3:
            raise self.error
        return self.data[index]


class NeedsTwoArguments(Exception):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_keeps_its_one_line_error_from_a_worker(workers):
    message = "VOC image /data/JPEGImages/000003.jpg: cannot read: truncated file"
    with pytest.raises(ValueError) as caught:
        list(eval_batches(Corrupt(ValueError(message)), list(range(6)), 2, workers, CPU))
    assert str(caught.value) == message  # not torch's "Caught ValueError in DataLoader worker process"
    with pytest.raises(RuntimeError, match=r"^/x.jpg: bad header$"):  # an error torch could not rebuild
        list(eval_batches(Corrupt(NeedsTwoArguments("/x.jpg", "bad header")), list(range(6)), 2, workers, CPU))


def test_eval_batches_keep_order_and_size():
    data = SyntheticShapes("test", num_images=7, image_size=128)
    batches = list(eval_batches(data, [6, 0, 5, 1, 4], 2, 2, CPU))
    assert [indices for indices, _, _ in batches] == [[6, 0], [5, 1], [4]]
    assert torch.equal(batches[1][1][0], data[5][0])


def test_predict_with_workers_equals_in_process(tiny_cfg):
    data = SyntheticShapes("test", num_images=5, image_size=128)
    torch.manual_seed(0)
    model = training.build_model(tiny_cfg, len(data.classes))
    a = predict(model, data, CPU, batch_size=2, workers=0)
    b = predict(model, data, CPU, batch_size=2, workers=2)
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores) and torch.equal(x.labels, y.labels)


def test_flipped_training_with_workers_resumes_exactly_like_an_in_process_run(tiny_cfg, tmp_path):
    cfg = apply_overrides(tiny_cfg, ["data.hflip=true", "solver.iterations=4", "train.checkpoint_every=2"])
    training.train(apply_overrides(cfg, ["data.workers=0"]), tmp_path / "inline")
    training.train(apply_overrides(cfg, ["data.workers=2", "solver.iterations=2"]), tmp_path / "workers")
    training.train(apply_overrides(cfg, ["data.workers=1"]), tmp_path / "workers", resume=True)
    a = load_checkpoint(tmp_path / "inline" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "workers" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [
        [json.loads(x) for x in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("inline", "workers")
    ]
    losses = [[r["loss"] for r in log if "eval" not in r] for log in logs]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.workers=-1", "data.workers must be an integer in [0, 64] or null, got -1"),
        ("test.images_per_batch=0", "test.images_per_batch must be an integer in [1, 4096], got 0"),
        ("train.timing_every=0", "train.timing_every must be an integer in [1, 1000000000], got 0"),
        ("sampler.start=-1", "sampler.start must be an integer in [0, 1000000000], got -1"),
    ],
)
def test_loader_settings_are_checked_before_anything_is_written(tiny_cfg, tmp_path, override, message):
    with pytest.raises(ValueError, match=f"^override '{re.escape(override)}': {re.escape(message)}$"):
        training.train(apply_overrides(tiny_cfg, [override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_step_seconds_reads_wall_time_and_data_share_after_the_warm_up(tmp_path):
    from ohem.engine.runlog import step_seconds

    lines = [{"iteration": i, "time_data": 9.0, "time_step": 9.0} for i in range(1, 3)]  # warm-up
    lines += [
        {"iteration": 3, "time_data": 0.1, "time_step": 0.3},
        {"iteration": 3, "eval": {"mAP": 0.5}},
        {"iteration": 4, "time_data": 0.3, "time_step": 0.5},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    per_iter, wait = step_seconds(path, skip=2)
    assert per_iter == pytest.approx(0.6) and wait == pytest.approx(0.4 / 1.2)
