"""``ohem.bench.opcount``: FLOPs, RoIAlign bytes and host syncs counted on known operations; an OHEM
training step (with the selection CUDA runs) waits on the host no more often than a heuristic step."""

import torch
from torchvision.ops import roi_align, roi_pool

import ohem.mining.samplers.ohem as hard_examples
from ohem.bench.opcount import count_ops, pooling_bytes
from ohem.config import load_config
from ohem.data import build_dataset
from ohem.data.loader import eval_batches
from ohem.events import EventStorage
from ohem.mining import build_detector
from ohem.mining.select import select_by_batched_nms
from tests.conftest import TINY


def test_a_linear_layer_costs_six_flops_per_weight_and_row_forward_and_backward():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, requires_grad=True)
    with count_ops() as count:
        layer(x).sum().backward()
    # forward 2*8*32*16; backward: the same for the input's gradient and for the weight's
    assert count.flops == 3 * 2 * 8 * 32 * 16
    assert count.syncs == 0 and count.roi_pool_calls == 0


def test_roi_align_bytes_follow_the_samples_per_bin():
    feature = torch.randn(1, 4, 16, 16, requires_grad=True)
    rois = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [0, 2.0, 2.0, 14.0, 6.0]])
    with count_ops() as count:
        roi_align(feature, rois, (2, 2), spatial_scale=1.0, sampling_ratio=2).sum().backward()
    # per RoI, bin and channel: 2 x 2 samples of 4 float32 values read, one value written; twice (backward)
    per_pass = 2 * (2 * 2) * 4 * (2 * 2 * 4 * 4 + 4)  # RoIs, bins, channels
    assert (count.roi_pool_calls, count.roi_pool_bytes) == (2, 2 * per_pass)
    # adaptive (sampling_ratio -1): ceil(roi height / 2) x ceil(roi width / 2) samples per bin, per RoI
    samples = 4 * 4 + 2 * 6  # 8 x 8 RoI: 4 x 4; 12 wide x 4 high: 2 x 6
    args = (feature, rois, 1.0, 2, 2, -1, False)
    assert pooling_bytes("torchvision::roi_align", args) == samples * 2 * 2 * 4 * 4 * 4 + 2 * 2 * 2 * 4 * 4


def test_roi_pool_bytes_read_every_cell_under_the_roi_once_per_channel():
    feature = torch.randn(1, 4, 16, 16, requires_grad=True)
    rois = torch.tensor([[0, 0.0, 0.0, 7.0, 7.0], [0, 12.0, 12.0, 30.0, 30.0]])  # the second clipped to the map
    with count_ops() as count:
        out = roi_pool(feature, rois, (2, 2), spatial_scale=1.0)
        out.sum().backward()
    cells = 8 * 8 + 4 * 4  # 8 x 8 cells; 12..15 x 12..15 inside the 16 x 16 map
    forward = cells * 4 * 4 + 2 * 4 * 2 * 2 * (4 + 8)  # float32 values read; bins and their argmax written
    argmax = torch.ops.torchvision.roi_pool(feature, rois, 1.0, 2, 2)[1]
    backward = 2 * 4 * 2 * 2 * (2 * 4 + argmax.element_size())
    assert (count.roi_pool_calls, count.roi_pool_bytes) == (2, forward + backward)


def test_host_syncs_are_the_ops_a_gpu_would_wait_for():
    x, mask, index = torch.arange(6.0), torch.tensor([True, False] * 3), torch.tensor([0, 2])
    with count_ops(flops=False) as count:
        x[index]  # integer indexing: no sync
        x.sum() * 2  # stays on the device
        x[mask]
        x.nonzero()
        x.max().item()
        x.tolist()
        x.cpu()
    assert dict(count.host_syncs) == {
        "aten::index.Tensor": 1,
        "aten::nonzero": 1,
        "aten::_local_scalar_dense": 1,
        "Tensor.tolist": 1,
        "Tensor.cpu": 1,
    }


def test_the_device_selection_reads_no_image_count_back_when_given_it():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(600, 2, generator=g) * 100
    boxes, losses = torch.cat([xy, xy + 20], 1), torch.rand(600, generator=g)
    image_ids = torch.arange(600) // 300
    with count_ops(flops=False) as without:
        expected = select_by_batched_nms(losses, boxes, image_ids, 16, 0.7)
    with count_ops(flops=False) as given:
        rows = select_by_batched_nms(losses, boxes, image_ids, 16, 0.7, num_images=2)
    assert torch.equal(rows, expected)
    assert without.host_syncs["aten::bincount"] == 1 and "aten::bincount" not in given.host_syncs
    # what is left, per round of the prefix: the prefix's mask, CUDA's NMS, the 'enough?' test, the cut
    assert given.syncs == 4


def step_count(monkeypatch, sampler: list[str]):
    """Host syncs of one training step (forward, backward) of the tiny demo model, with OHEM's CUDA selection."""
    monkeypatch.setattr(hard_examples, "select_hard_examples", select_by_batched_nms)
    torch.set_num_threads(1)  # the read-only pass's pooling stays in this thread, where the counters see it
    cfg = load_config("demo", [*TINY, *sampler])
    data = build_dataset(cfg.data, "train")
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.sampler, len(data.classes)).train()
    _, images, targets = next(eval_batches(data, [0, 1], 2, 0, torch.device("cpu")))
    with EventStorage(10), count_ops(flops=False) as count:
        losses = model(images, targets)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    return count


def test_an_ohem_step_waits_on_the_host_no_more_often_than_a_heuristic_step(monkeypatch):
    images = 2
    heuristic = step_count(monkeypatch, ["sampler.method=heuristic"])
    ohem = step_count(monkeypatch, ["sampler.method=ohem"])
    extra = ohem.host_syncs - heuristic.host_syncs
    assert ohem.syncs <= heuristic.syncs, f"OHEM's extra host syncs: {dict(extra)}"
    # the heuristic samples with a nonzero per image and class kind; OHEM's selection is per batch
    assert heuristic.host_syncs["aten::nonzero"] - ohem.host_syncs["aten::nonzero"] == 3 * images
