"""What a training step costs in operations, whatever the machine: the FLOPs of its forward and backward
passes (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions), the bytes RoIAlign
moves (FlopCounterMode has no formula for torchvision's kernels, and RoIAlign is bound by memory, not
arithmetic), and the operations that make the host wait for a GPU (host syncs).

The host syncs are counted by name on any device, so a CPU run says what a CUDA run would wait for:
at the dispatcher, the ops whose output size or value the host must read (``nonzero``, indexing by a
boolean mask, ``_local_scalar_dense`` behind ``item()`` and ``bool()``, ``unique``, CUDA's ``nms``
...); at the Python level, ``tolist()``, ``cpu()`` and ``numpy()``, which copy a GPU tensor to the host
(on the CPU they dispatch nothing, so the dispatcher alone would miss them). On a GPU,
``torch.cuda.set_sync_debug_mode`` is the check of this list (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# ops that read a device value back to size or fill their output (aten's own names)
SYNC_OPS = frozenset(
    {
        "aten::_local_scalar_dense",  # item(), bool(t), int(t), float(t)
        "aten::nonzero",  # also where(mask), argwhere
        "aten::masked_select",
        "aten::_unique",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::bincount",  # reads the maximum to size its output
        "aten::equal",
        "torchvision::nms",  # CUDA's kernel copies its mask to the host
    }
)
MASK_INDEXING = frozenset({"aten::index.Tensor", "aten::index_put", "aten::index_put_"})  # with a boolean index
HOST_COPIES = ("tolist", "cpu", "numpy")  # Tensor methods that copy a GPU tensor to the host
ROI_ALIGN = frozenset({"torchvision::roi_align", "torchvision::_roi_align_backward"})
ROI_POOL = frozenset({"torchvision::roi_pool", "torchvision::_roi_pool_backward"})  # Fast R-CNN's VGG16


@dataclass
class OpCount:
    """What the operations inside ``count_ops`` cost."""

    flops: int = 0  # forward and backward, FlopCounterMode's formulas (a multiply-add is 2)
    roi_pool_bytes: int = 0  # RoIAlign / RoIPool forward and backward: the feature values read, the bins written
    roi_pool_calls: int = 0
    host_syncs: Counter = field(default_factory=Counter)  # op name -> count

    @property
    def syncs(self) -> int:
        return sum(self.host_syncs.values())


def _is_mask(index: Any) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def pooling_bytes(name: str, args: tuple) -> int:
    """Bytes one RoI pooling call moves (``roi_align_bytes`` or ``roi_pool_bytes`` by the op's name)."""
    return roi_pool_op_bytes(name, args) if name in ROI_POOL else roi_align_bytes(name, args)


def roi_pool_op_bytes(name: str, args: tuple) -> int:
    """Bytes one RoIPool call moves: forward, every feature value under each RoI (clipped to the map) read
    once per channel, the bins and their argmax written; backward, the bins' gradient and argmax read and
    scattered."""
    if name.endswith("_backward"):
        grad, argmax = args[0], args[2]
        return int(grad.numel() * (2 * grad.element_size() + argmax.element_size()))
    feature, rois, scale, height, width = args[:5]
    boxes = (rois[:, 1:].detach().float() * scale).round()
    high = torch.tensor([feature.shape[3] - 1, feature.shape[2] - 1], dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), torch.cat([high, high]))
    cells = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)).sum()
    bins = rois.shape[0] * feature.shape[1] * height * width
    return int(cells) * feature.shape[1] * feature.element_size() + bins * (feature.element_size() + 8)


def roi_align_bytes(name: str, args: tuple) -> int:
    """Bytes one RoIAlign call moves: per output bin, ``samples`` bilinear reads of 4 feature values
    per channel and one write (backward: the same pattern, scattering the gradient). With an adaptive
    sampling ratio (<= 0) the samples per bin follow each RoI's size, as torchvision's kernel does."""
    grad_or_input, rois, scale, height, width = args[:5]
    ratio, aligned = (args[9], args[10]) if name.endswith("_backward") else (args[5], args[6])
    channels = args[6] if name.endswith("_backward") else grad_or_input.shape[1]
    if ratio > 0:
        samples = rois.shape[0] * ratio * ratio
    else:
        offset = 0.5 if aligned else 0.0
        boxes = rois[:, 1:].detach().float() * scale - offset
        sizes = boxes[:, 2:] - boxes[:, :2]
        if not aligned:
            sizes = sizes.clamp(min=1.0)
        per_bin = torch.ceil(sizes[:, 1] / height).clamp(min=1) * torch.ceil(sizes[:, 0] / width).clamp(min=1)
        samples = int(per_bin.sum())
    element = grad_or_input.element_size()
    return int(samples * height * width * channels * 4 * element + rois.shape[0] * height * width * channels * element)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, count: OpCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.name()
        if name in SYNC_OPS or (name in MASK_INDEXING and any(_is_mask(i) for i in (args[1] if len(args) > 1 else ()))):
            self.count.host_syncs[name] += 1
        if name in ROI_ALIGN or name in ROI_POOL:
            self.count.roi_pool_bytes += pooling_bytes(name, args)
            self.count.roi_pool_calls += 1
        return func(*args, **(kwargs or {}))


class _HostCopyCounter(TorchFunctionMode):
    def __init__(self, count: OpCount) -> None:
        super().__init__()
        self.count = count
        self.methods = {getattr(torch.Tensor, name): name for name in HOST_COPIES}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self.methods:
            self.count.host_syncs[f"Tensor.{self.methods[func]}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_ops(flops: bool = True) -> Iterator[OpCount]:
    """Count what runs inside (forward and backward); the ``OpCount`` is filled when the block ends.
    Work in other threads is not seen: run with one intra-op thread (``torch.set_num_threads(1)``)
    where the code hands work to a thread pool (``ohem.mining.pooling``)."""
    count = OpCount()
    flop_counter = FlopCounterMode(display=False) if flops else contextlib.nullcontext()
    with flop_counter, _DispatchCounter(count), _HostCopyCounter(count):
        yield count
    if isinstance(flop_counter, FlopCounterMode):
        count.flops = int(flop_counter.get_total_flops())
