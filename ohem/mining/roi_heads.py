"""OHEM for torchvision's RoI heads, in the order of one training step (docs/PAPER.md):

1. ``label_rois``: every proposal plus the gt boxes, labelled (fg at IoU >= 0.5, else bg, no fg
   fraction, background from ``bg_iou_low`` up);
2. ``readonly_losses``: the box head over all of them under ``no_grad``, one loss per RoI, in
   ``sampler.readonly_precision``;
3. ``select_hard_examples``: the highest-loss RoIs per image after NMS among them;
4. ``OHEMRoIHeads``: torchvision's own forward and loss, with gradients, on those RoIs only (on the
   CPU from the read-only pass's pooling of them: ``ohem.mining.pooling``).
Evaluation is ``RoIHeads``' own code path, untouched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_area, box_iou

from ohem.config import SamplerConfig
from ohem.mining.box_targets import BoxTargetNorm
from ohem.mining.pooling import can_reuse_pooling, readonly_pool, reuse_pooling, rows_of, split_by_image
from ohem.mining.select import select_hard_examples


@dataclass
class LabelledRoIs:
    """RoIs of a batch, concatenated over images (image ``i``'s rows are contiguous)."""

    boxes: torch.Tensor  # (R, 4) in the resized frame
    image_ids: torch.Tensor  # (R,)
    matched_idxs: torch.Tensor  # (R,) index of the best gt box in its image
    labels: torch.Tensor  # (R,) class, 0 = background
    box_targets: torch.Tensor  # (R, 4) encoded by the head's box coder
    matched_gt: torch.Tensor  # (R, 4) the best gt box
    num_images: int

    def per_image(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
        """``rows`` (in image order) as torchvision's per-image (proposals, matched idxs, labels, targets)."""
        parts = split_by_image(rows, self.image_ids[rows], self.num_images)
        fields = (self.boxes, self.matched_idxs, self.labels, self.box_targets)
        return tuple([field[p] for p in parts] for field in fields)


def match_rois(
    heads: RoIHeads,
    rois: list[torch.Tensor],
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    bg_iou_low: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: best gt index and label of each RoI (class at IoU >= fg, 0 in [bg_iou_low, bg), else -1)."""
    fg_iou, bg_iou_high = heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold
    matched_idxs, labels = [], []
    for boxes, gt, classes in zip(rois, gt_boxes, gt_labels):
        if gt.numel() == 0:
            best_iou, best_gt = (
                boxes.new_zeros(boxes.shape[0]),
                torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device),
            )
            label = torch.zeros_like(best_gt)
        else:
            best_iou, best_gt = box_iou(gt, boxes).max(dim=0)
            label = classes[best_gt].to(torch.int64).masked_fill(best_iou < fg_iou, 0)
        # masked_fill, not boolean-mask assignment: that one is a nonzero, a host sync on CUDA
        label = label.masked_fill(((best_iou >= bg_iou_high) & (best_iou < fg_iou)) | (best_iou < bg_iou_low), -1)
        matched_idxs.append(best_gt)
        labels.append(label)
    return matched_idxs, labels


def label_rois(heads: RoIHeads, proposals: list[torch.Tensor], targets: list[dict], bg_iou_low: float) -> LabelledRoIs:
    """All proposals plus the gt boxes, labelled, without sampling; ignored RoIs are dropped."""
    heads.check_targets(targets)
    gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
    rois = heads.add_gt_proposals(proposals, gt_boxes)
    matched_idxs, labels = match_rois(heads, rois, gt_boxes, [t["labels"] for t in targets], bg_iou_low)
    kept = torch.nonzero(torch.cat(labels) >= 0).squeeze(1)  # one nonzero (a host sync on CUDA) per batch
    gts = [g if g.numel() else g.new_zeros((1, 4)) for g in gt_boxes]  # no objects: matched to a dummy box
    offsets = [sum(len(g) for g in gts[:i]) for i in range(len(gts))]  # image i's gt rows in torch.cat(gts)
    matched_gt = torch.cat(gts)[torch.cat([m + o for m, o in zip(matched_idxs, offsets)])[kept]]
    boxes, labels = torch.cat(rois)[kept], torch.cat(labels)[kept]
    image_ids = torch.cat([torch.full((len(r),), i, device=boxes.device) for i, r in enumerate(rois)])[kept]
    box_targets = heads.box_coder.encode_single(matched_gt, boxes)
    if getattr(heads, "box_target_norm", None) is not None:
        box_targets = heads.box_target_norm.normalise(box_targets, labels)
    matched = torch.cat(matched_idxs)[kept]
    return LabelledRoIs(boxes, image_ids, matched, labels, box_targets, matched_gt, len(rois))


def per_roi_loss_terms(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, box_targets: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Unreduced (cross-entropy, smooth-L1 with ``beta``) of each RoI, the box term 0 on background: the
    terms of torchvision's ``fastrcnn_loss`` (summed over 4 coordinates), so their mean is what training optimises."""
    cls_loss = F.cross_entropy(class_logits, labels, reduction="none")
    # Every RoI's deltas for its own class, the background's term masked to 0 rather than the
    # foreground picked out by index: no nonzero, so no host sync on CUDA. Background targets are
    # masked first (a gt-less image's are infinite).
    fg = labels > 0
    rows = torch.arange(labels.numel(), device=labels.device)
    own = box_regression.reshape(box_regression.shape[0], -1, 4)[rows, labels]
    targets = torch.where(fg.unsqueeze(1), box_targets, 0.0)
    box_loss = F.smooth_l1_loss(own, targets, beta=beta, reduction="none").sum(1)
    return cls_loss, torch.where(fg, box_loss, 0.0)


def foreground_probability(class_logits: Tensor) -> Tensor:
    """(R,) 1 - P(background) of each RoI: their spread over RoIs tells a head that ranks RoIs from
    a collapsed one (``ohem.mining.stall``)."""
    return 1 - class_logits.detach().float().softmax(1)[:, 0]


def mining_loss(cls_loss: torch.Tensor, box_loss: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss RoIs are ranked by: ``cls`` (mmdetection) or ``cls+box`` (the paper)."""
    return cls_loss if kind == "cls" else cls_loss + box_loss


@torch.no_grad()
def readonly_losses(
    heads: RoIHeads, features: dict, rois: LabelledRoIs, image_shapes: list[tuple[int, int]], sampler: SamplerConfig,
    pooled: list[Tensor] | None = None, fg_scores: list[Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """(R,) mining loss of every RoI, ``sampler.max_rois_per_chunk`` RoIs at a time, no graph kept, in
    ``sampler.readonly_precision``; the pooled features are appended to ``pooled`` and the foreground
    probabilities to ``fg_scores`` when given."""
    chunks, step = [], sampler.max_rois_per_chunk
    with readonly_mode(heads, sampler.readonly_dropout), readonly_numerics(rois.boxes.device, sampler):
        for start in range(0, rois.boxes.shape[0], step):
            boxes, ids = rois.boxes[start : start + step], rois.image_ids[start : start + step]
            features_of_rois = readonly_pool(heads, features, boxes, ids, rois.num_images, image_shapes)
            if pooled is not None:
                pooled.append(features_of_rois)
            logits, deltas = heads.box_predictor(heads.box_head(features_of_rois))
            if fg_scores is not None:
                fg_scores.append(foreground_probability(logits))
            labels, targets = rois.labels[start : start + step], rois.box_targets[start : start + step]
            terms = per_roi_loss_terms(logits, deltas, labels, targets, box_loss_beta(heads))
            chunks.append(mining_loss(*terms, sampler.mining_loss))
    return torch.cat(chunks) if chunks else rois.boxes.new_zeros(0)


def readonly_numerics(device: torch.device, sampler: SamplerConfig) -> contextlib.AbstractContextManager:
    """bf16/fp16: autocast of that dtype; tf32/fp32: TF32 matmuls and convolutions on/off on CUDA (on
    the CPU both are plain float32). The trainable pass keeps the step's own precision."""
    precision = sampler.readonly_precision
    if precision in ("bf16", "fp16"):
        # An enclosing autocast already runs this pass in low precision; a nested one of another dtype
        # would leave its weight casts in the shared autocast cache, so none is opened then.
        if torch.is_autocast_enabled(device.type):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return cuda_tf32(precision == "tf32") if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """CUDA matmuls and cuDNN convolutions in TF32 (or strict float32), restored on exit."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: its new API only (mixing it with the old raises)
        saved = matmul.fp32_precision, cudnn.conv.fp32_precision
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved
    else:
        saved = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved


@contextlib.contextmanager
def readonly_mode(heads: RoIHeads, dropout: bool) -> Iterator[None]:
    """BatchNorm on batch statistics without updating its running ones; dropout off unless ``dropout``."""
    changed: list[tuple[nn.Module, str]] = []
    for m in (m for part in (heads.box_roi_pool, heads.box_head, heads.box_predictor) for m in part.modules()):
        if isinstance(m, nn.modules.dropout._DropoutNd) and not dropout and m.training:
            changed.append((m, "training"))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            changed.append((m, "track_running_stats"))
    for m, attr in changed:
        setattr(m, attr, False)
    try:
        yield
    finally:
        for m, attr in changed:
            setattr(m, attr, True)


TORCHVISION_BOX_BETA = 1 / 9  # what torchvision's fastrcnn_loss hard-codes


def box_loss_beta(heads: RoIHeads) -> float:
    return getattr(heads, "box_loss_beta", TORCHVISION_BOX_BETA)


def raw_box_deltas(heads: RoIHeads, box_regression: Tensor) -> Tensor:
    """The box predictor's output as ``heads.box_coder`` decodes it."""
    norm = getattr(heads, "box_target_norm", None)
    return box_regression if norm is None else norm.unnormalise(box_regression)


class BoxLossRoIHeads(RoIHeads):
    """``RoIHeads`` with Fast R-CNN's box-loss settings: smooth-L1 ``box_loss_beta`` in training
    (torchvision hard-codes 1/9) and, after ``use_empirical_box_targets``, normalised box targets."""

    def __init__(self, *args, box_loss_beta: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.box_loss_beta = box_loss_beta
        self.box_target_norm: BoxTargetNorm | None = None
        self._sampled: tuple[list[Tensor], ...] | None = None  # the RoIs the current training forward uses

    def use_empirical_box_targets(self) -> None:
        """Regress raw deltas normalised per class (Fast R-CNN); the statistics are set by the trainer."""
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.box_target_norm = BoxTargetNorm(self.box_predictor.cls_score.out_features)

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:  # fmt: skip
        features, proposals = poolable(features, proposals)
        if not self.training or self.box_loss_beta == TORCHVISION_BOX_BETA:
            return super().forward(features, proposals, image_shapes, targets)
        outputs: list[tuple[Tensor, Tensor]] = []
        hook = self.box_predictor.register_forward_hook(lambda module, args, out: outputs.append(out))
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            _, _, labels, box_targets = self._sampled
        finally:
            hook.remove()
            self._sampled = None
        # torchvision's box term, with this head's beta: summed over fg RoIs, divided by all sampled RoIs.
        labels, box_targets = torch.cat(labels), torch.cat(box_targets)
        _, box_loss = per_roi_loss_terms(outputs[0][0], outputs[0][1], labels, box_targets, self.box_loss_beta)
        return result, {**losses, "loss_box_reg": box_loss.sum() / max(labels.numel(), 1)}

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], ...]:
        """torchvision's fg/bg sample, with normalised box targets when the head has a norm."""
        proposals, matched_idxs, labels, box_targets = super().select_training_samples(proposals, targets)
        if self.box_target_norm is not None:
            box_targets = [self.box_target_norm.normalise(t, lab) for t, lab in zip(box_targets, labels)]
        self._sampled = (proposals, matched_idxs, labels, box_targets)
        return self._sampled

    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_shapes: list
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return super().postprocess_detections(
            class_logits, raw_box_deltas(self, box_regression), proposals, image_shapes
        )


class OHEMRoIHeads(BoxLossRoIHeads):
    """``RoIHeads`` that trains on the hardest RoIs instead of a fg/bg sample (Shrivastava et al. 2016).

    ``sampler`` holds the mining settings (batch_size_per_image, nms_iou, nms_per_label, mining_loss,
    bg_iou_low, max_rois_per_chunk, readonly_dropout, readonly_precision). The loss dict gains detached
    ``ohem_*`` statistics; ``last_mining`` holds the last step's mined RoIs (detached, on their device);
    ``last_mining_seconds`` the wall time of labelling, read-only pass and selection, measured after
    the queued CUDA kernels finish when ``sync_timing`` is set (the trainer sets it on logged steps).
    """

    def __init__(self, *args, sampler: SamplerConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.last_mining: dict = {}
        self.last_mining_seconds = 0.0
        self.sync_timing = False
        self.mining_on = True  # the trainer turns it off before sampler.ohem_start

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:  # fmt: skip
        features, proposals = poolable(features, proposals)
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        s, device = self.sampler, proposals[0].device
        tic = clock(self.sync_timing, device)
        rois = label_rois(self, proposals, targets, s.bg_iou_floor)
        pooled: list[Tensor] | None = [] if can_reuse_pooling(self, features) else None
        fg_scores: list[Tensor] = []
        losses = readonly_losses(self, features, rois, image_shapes, s, pooled, fg_scores)
        if self.mining_on:
            per_label = rois.labels if s.nms_per_label else None
            hard = select_hard_examples(losses, rois.boxes, rois.image_ids, s.batch_size_per_image, s.nms_iou,
                                        per_label)  # fmt: skip
        else:  # before sampler.ohem_start: the losses are measured, the sample is random
            hard = random_fg_bg(rois, s.batch_size_per_image, s.fg_fraction)
        self.last_mining_seconds = clock(self.sync_timing, device) - tic
        self._sampled = rois.per_image(hard)
        # the trainable pass: torchvision's forward and loss, on the RoIs select_training_samples hands it
        # (pooled by the read-only pass already, on the CPU)
        reuse = reuse_pooling(self, rows_of(pooled, hard)) if pooled else contextlib.nullcontext()
        try:
            with reuse:
                result, train_losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            self._sampled = None
        self.last_mining = mining_record(rois, losses, hard, image_shapes)
        return result, {**train_losses, **mining_stats(rois, losses, hard, torch.cat(fg_scores))}

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], ...]:
        """torchvision's hook: the RoIs ``forward`` mined."""
        if self._sampled is None:
            raise RuntimeError("OHEMRoIHeads.select_training_samples is called from forward() only")
        return self._sampled


def random_fg_bg(rois: LabelledRoIs, per_image: int, fg_fraction: float) -> torch.Tensor:
    """Rows of a random sample per image, as torchvision's sampler draws it: at most ``fg_fraction``
    x ``per_image`` foreground, background for the rest."""
    sampler = BalancedPositiveNegativeSampler(per_image, fg_fraction)
    labels = split_by_image(rois.labels, rois.image_ids, rois.num_images)
    rows, offset = [], 0
    for image_labels, pos, neg in zip(labels, *sampler(labels)):
        rows.append(torch.nonzero(pos | neg).squeeze(1) + offset)
        offset += image_labels.numel()
    return torch.cat(rows)


def mining_stats(
    rois: LabelledRoIs, losses: torch.Tensor, hard: torch.Tensor, fg_scores: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Detached statistics for the loss dict: mean loss over all RoIs and over the mined ones, fg
    shares, and the spread (std over all RoIs) of the foreground probability."""
    zero = losses.new_zeros(())
    return {
        "ohem_score_spread": fg_scores.std() if fg_scores.numel() > 1 else zero,
        "ohem_all_roi_loss": losses.mean() if losses.numel() else zero,
        "ohem_mined_loss": losses[hard].mean() if hard.numel() else zero,
        "ohem_mined_fg_fraction": (rois.labels[hard] > 0).float().mean() if hard.numel() else zero,
        "ohem_all_fg_fraction": (rois.labels > 0).float().mean() if losses.numel() else zero,
    }


def mining_record(rois: LabelledRoIs, losses: torch.Tensor, hard: torch.Tensor, image_shapes: list) -> dict:
    """The mined RoIs of one step, detached, left on their device: ``MiningRecorder`` reads them on the
    host only when it writes a record (boxes in the resized ``image_shapes`` frames)."""
    boxes = rois.boxes[hard].detach()
    return {
        "image_ids": rois.image_ids[hard],
        "boxes": boxes,
        "labels": rois.labels[hard],
        "losses": losses[hard].detach(),
        "iou": elementwise_iou(boxes, rois.matched_gt[hard]),
        "image_shapes": list(image_shapes),
    }


def clock(sync: bool, device: torch.device) -> float:
    """``time.perf_counter()``; with ``sync``, once the kernels queued on a CUDA ``device`` have run
    (without it, CUDA time is only the time to queue them)."""
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def poolable(features: dict, proposals: list[torch.Tensor]) -> tuple[dict, list[torch.Tensor]]:
    """Inputs roi_align takes under CPU autocast: float32 (torchvision's CPU kernel has no bfloat16;
    on CUDA, torchvision's own autocast rule for roi_align makes this same cast)."""
    if torch.is_autocast_enabled("cpu") and any(f.device.type == "cpu" for f in features.values()):
        return {k: v.float() for k, v in features.items()}, [p.float() for p in proposals]
    return features, proposals


def elementwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=1e-12)
