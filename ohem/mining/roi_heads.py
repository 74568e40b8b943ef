"""RoI heads for torchvision two-stage detectors: Fast R-CNN's heuristic sampling and OHEM.

``FastRCNNRoIHeads`` is torchvision's ``RoIHeads`` plus Fast R-CNN's ``bg_iou_low``: RoIs whose best
IoU with the ground truth is below it are ignored, so background comes only from [bg_iou_low, 0.5).
With ``bg_iou_low=0`` and 512 RoIs per image it is torchvision's default sampler.

``OHEMRoIHeads`` replaces the sampler by online hard example mining (PAPER.md, one training step):
label every RoI, run the box head read-only over all of them, keep the highest-loss RoIs per image
after NMS, and train on those. Evaluation is ``RoIHeads``' own code path, untouched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_area, box_iou

from ohem.mining.select import select_hard_examples

MINING_LOSSES = ("cls+box", "cls")
IMPLEMENTATIONS = ("two-pass", "loss-zeroing")


def per_roi_loss_terms(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unreduced (cross-entropy, smooth-L1) of each RoI; the box term is 0 on background.

    Same terms as torchvision's ``fastrcnn_loss`` (smooth-L1 with beta 1/9, summed over the four
    coordinates), so their mean over some RoIs is the loss the trainable pass optimises on them.
    """
    cls_loss = F.cross_entropy(class_logits, labels, reduction="none")
    fg = torch.nonzero(labels > 0).squeeze(1)
    box_regression = box_regression.reshape(box_regression.shape[0], -1, 4)
    fg_box_loss = F.smooth_l1_loss(
        box_regression[fg, labels[fg]], regression_targets[fg], beta=1 / 9, reduction="none"
    ).sum(dim=1)
    return cls_loss, torch.zeros_like(cls_loss).index_add(0, fg, fg_box_loss)


def per_roi_loss(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
    mining_loss: str = "cls+box",
) -> torch.Tensor:
    """The mining loss of each RoI: cross-entropy, plus the box term for ``"cls+box"``."""
    return _mining_loss(*per_roi_loss_terms(class_logits, box_regression, labels, regression_targets), mining_loss)


def _mining_loss(cls_loss: torch.Tensor, box_loss: torch.Tensor, mining_loss: str) -> torch.Tensor:
    return cls_loss if mining_loss == "cls" else cls_loss + box_loss


class FastRCNNRoIHeads(RoIHeads):
    """``RoIHeads`` whose background comes from IoU in [``bg_iou_low``, bg threshold)."""

    def __init__(self, *args, bg_iou_low: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bg_iou_low = bg_iou_low

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, **kwargs) -> FastRCNNRoIHeads:
        """A new head of this class that reuses every module and setting of ``heads``."""
        sampler = heads.fg_bg_sampler
        settings = dict(
            fg_iou_thresh=heads.proposal_matcher.high_threshold,
            bg_iou_thresh=heads.proposal_matcher.low_threshold,
            batch_size_per_image=sampler.batch_size_per_image,
            positive_fraction=sampler.positive_fraction,
            bbox_reg_weights=heads.box_coder.weights,
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
        )
        settings.update(kwargs)
        new = cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor,
            keypoint_roi_pool=heads.keypoint_roi_pool,
            keypoint_head=heads.keypoint_head,
            keypoint_predictor=heads.keypoint_predictor,
            **settings,
        )
        return new.train(heads.training)

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: ANN001, ANN201
        features, proposals = _poolable(features, proposals)
        return super().forward(features, proposals, image_shapes, targets)

    def assign_targets_to_proposals(
        self,
        proposals: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        bg_iou_low: float | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: matched gt index and label (fg class, 0 = bg, -1 = ignored) of each RoI.
        ``bg_iou_low`` overrides the head's own for this call."""
        bg_iou_low = self.bg_iou_low if bg_iou_low is None else bg_iou_low
        fg_iou = self.proposal_matcher.high_threshold
        bg_iou_high = self.proposal_matcher.low_threshold
        matched_idxs, labels = [], []
        for rois, boxes, classes in zip(proposals, gt_boxes, gt_labels):
            if boxes.numel() == 0:
                best_iou = rois.new_zeros(rois.shape[0])
                best_gt = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
                label = torch.zeros_like(best_gt)
            else:
                best_iou, best_gt = box_iou(boxes, rois).max(dim=0)
                label = classes[best_gt].to(torch.int64)
                label[best_iou < fg_iou] = 0
            label[(best_iou >= bg_iou_high) & (best_iou < fg_iou)] = -1
            label[best_iou < bg_iou_low] = -1
            matched_idxs.append(best_gt)
            labels.append(label)
        return matched_idxs, labels

    def label_rois(
        self,
        proposals: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        bg_iou_low: float | None = None,
    ) -> tuple[list[torch.Tensor], ...]:
        """All proposals plus the gt boxes, labelled, without sampling; ignored RoIs (IoU below
        ``bg_iou_low``, the head's own unless given) are dropped. Returns per image: RoIs, matched
        gt index, label, box target, matched gt box."""
        self.check_targets(targets)
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        gt_labels = [t["labels"] for t in targets]
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels, bg_iou_low)
        kept = [torch.nonzero(label >= 0).squeeze(1) for label in labels]
        proposals = [p[k] for p, k in zip(proposals, kept)]
        matched_idxs = [m[k] for m, k in zip(matched_idxs, kept)]
        labels = [label[k] for label, k in zip(labels, kept)]
        matched_gt = [(g if g.numel() else g.new_zeros((1, 4)))[m] for g, m in zip(gt_boxes, matched_idxs)]
        return proposals, matched_idxs, labels, self.box_coder.encode(matched_gt, proposals), matched_gt

    def readonly_losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
        mining_loss: str = "cls+box",
        max_rois_per_chunk: int = 1024,
        dropout: bool = True,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Per-RoI loss of all RoIs (concatenated over images) through this head, under no_grad,
        ``max_rois_per_chunk`` RoIs at a time. BatchNorm uses batch statistics but its running
        statistics are left alone; dropout runs as in training unless ``dropout`` is False.
        ``dtype`` (e.g. ``torch.bfloat16``) runs the pass under autocast, unless the caller already
        does: ranking needs little precision."""
        rois = torch.cat(proposals)
        image_of_roi = torch.repeat_interleave(
            torch.arange(len(proposals), device=rois.device),
            torch.tensor([p.shape[0] for p in proposals], device=rois.device),
        )
        labels_all, targets_all = torch.cat(labels), torch.cat(regression_targets)
        chunks = []
        # Not nested in an enclosing autocast: that one already runs the pass in low precision, and a
        # nested one of another dtype would leave its weight casts in the shared autocast cache.
        # (torch.autocast(enabled=False) would switch the enclosing one off: use no context at all.)
        nested = torch.is_autocast_enabled(rois.device.type)
        use = dtype is not None and not nested
        autocast = torch.autocast(rois.device.type, dtype=dtype) if use else contextlib.nullcontext()
        with torch.no_grad(), self._readonly_mode(dropout), autocast:
            for start in range(0, rois.shape[0], max_rois_per_chunk):
                end = start + max_rois_per_chunk
                in_chunk = image_of_roi[start:end]
                # RoIs are grouped by image, so per-image pieces keep the concatenated order.
                pieces = [rois[start:end][in_chunk == i] for i in range(len(proposals))]
                x = self.box_head(self.box_roi_pool(features, pieces, image_shapes))
                class_logits, box_regression = self.box_predictor(x)
                chunks.append(
                    per_roi_loss(
                        class_logits, box_regression, labels_all[start:end], targets_all[start:end], mining_loss
                    )
                )
        return torch.cat(chunks) if chunks else rois.new_zeros(0)

    @contextlib.contextmanager
    def _readonly_mode(self, dropout: bool) -> Iterator[None]:
        changed: list[tuple[nn.Module, str, bool]] = []
        for module in (self.box_roi_pool, self.box_head, self.box_predictor):
            for m in module.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd) and not dropout and m.training:
                    changed.append((m, "training", True))
                    m.training = False
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    changed.append((m, "track_running_stats", True))
                    m.track_running_stats = False
        try:
            yield
        finally:
            for m, attr, value in changed:
                setattr(m, attr, value)


class OHEMRoIHeads(FastRCNNRoIHeads):
    """Online hard example mining in place of the fg/bg sampler (Shrivastava et al., CVPR 2016).

    Each training step: (1) label all proposals plus the gt boxes; (2) read-only pass under
    ``torch.no_grad()`` over all of them through this head's own pooler/head/predictor, in chunks of
    ``max_rois_per_chunk`` RoIs; (3) ``select_hard_examples`` keeps ``batch_size_per_image`` RoIs per
    image by loss after NMS at ``nms_iou``; (4) the usual forward and loss, with gradients, on those
    RoIs only. The loss dict gains detached ``ohem_*`` statistics next to torchvision's keys.

    ``implementation="loss-zeroing"`` is the variant the paper rejects, kept to measure its cost:
    one forward with gradients over all RoIs, the loss zeroed outside the same selection.
    """

    def __init__(
        self,
        *args,
        nms_iou: float | None = 0.7,
        mining_loss: str = "cls+box",
        max_rois_per_chunk: int = 1024,
        nms_per_label: bool = False,
        readonly_dropout: bool = True,
        implementation: str = "two-pass",
        readonly_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if mining_loss not in MINING_LOSSES:
            raise ValueError(f"mining_loss must be one of {MINING_LOSSES}, got {mining_loss!r}")
        if max_rois_per_chunk < 1:
            raise ValueError(f"max_rois_per_chunk must be >= 1, got {max_rois_per_chunk}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.nms_iou = nms_iou
        self.mining_loss = mining_loss
        self.max_rois_per_chunk = max_rois_per_chunk
        self.nms_per_label = nms_per_label
        self.readonly_dropout = readonly_dropout
        self.implementation = implementation
        self.readonly_dtype = readonly_dtype
        self.last_mining: dict[str, torch.Tensor] = {}
        self.last_mining_seconds = 0.0  # wall time of labelling + read-only pass + selection
        self._features: dict[str, torch.Tensor] | None = None
        self._image_shapes: list[tuple[int, int]] | None = None

    @property
    def num_per_image(self) -> int:
        return self.fg_bg_sampler.batch_size_per_image

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: ANN001, ANN201
        features, proposals = _poolable(features, proposals)
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.implementation == "loss-zeroing":
            return self._forward_loss_zeroing(features, proposals, image_shapes, targets)
        # RoIHeads.forward calls select_training_samples(proposals, targets); mining also needs
        # the features, so they are lent to it for the duration of the call.
        self._features, self._image_shapes = features, image_shapes
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            self._features = self._image_shapes = None
        losses.update(self._mining_stats)
        return result, losses

    def select_training_samples(self, proposals, targets):  # noqa: ANN001, ANN201
        if self._features is None:
            raise RuntimeError("OHEMRoIHeads.select_training_samples is called from forward() only")
        tic = time.perf_counter()
        proposals, matched_idxs, labels, regression_targets, matched_gt = self.label_rois(proposals, targets)
        losses = self.readonly_losses(
            self._features, proposals, self._image_shapes, labels, regression_targets,
            self.mining_loss, self.max_rois_per_chunk, self.readonly_dropout, self.readonly_dtype,
        )  # fmt: skip
        _, picked = self._select(losses, proposals, labels, matched_gt, self._image_shapes)
        self.last_mining_seconds = time.perf_counter() - tic  # on CUDA, without a sync: approximate
        return (
            [p[k] for p, k in zip(proposals, picked)],
            [m[k] for m, k in zip(matched_idxs, picked)],
            [label[k] for label, k in zip(labels, picked)],
            [t[k] for t, k in zip(regression_targets, picked)],
        )

    def _select(self, losses, proposals, labels, matched_gt, image_shapes):  # noqa: ANN001, ANN202
        """Hard RoIs, as indices into the concatenated RoIs and per image; records statistics and
        ``last_mining``."""
        counts = [p.shape[0] for p in proposals]
        image_ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(losses.device)
        rois, all_labels = torch.cat(proposals), torch.cat(labels)
        hard = select_hard_examples(
            losses, rois, image_ids, self.num_per_image, nms_iou=self.nms_iou,
            labels=all_labels if self.nms_per_label else None,
        )  # fmt: skip
        hard_labels = all_labels[hard]
        zero = losses.new_zeros(())
        self._mining_stats = {
            "ohem_all_roi_loss": losses.mean().detach() if losses.numel() else zero,
            "ohem_mined_loss": losses[hard].mean().detach() if hard.numel() else zero,
            "ohem_mined_fg_fraction": (hard_labels > 0).float().mean() if hard.numel() else zero,
            "ohem_all_fg_fraction": (all_labels > 0).float().mean() if all_labels.numel() else zero,
        }
        hard_rois = rois[hard]
        iou = _paired_iou(hard_rois, torch.cat(matched_gt)[hard])
        self.last_mining = {
            "image_ids": image_ids[hard].cpu(),
            "boxes": hard_rois.detach().cpu(),
            "labels": hard_labels.cpu(),
            "losses": losses[hard].detach().cpu(),
            "iou": iou.detach().cpu(),
            "image_shapes": list(image_shapes),  # boxes are in these (resized) frames
        }
        offsets = torch.tensor([0, *counts], device=losses.device).cumsum(0)
        return hard, [hard[image_ids[hard] == i] - offsets[i] for i in range(len(counts))]

    def _forward_loss_zeroing(self, features, proposals, image_shapes, targets):  # noqa: ANN001, ANN202
        if self.has_mask() or self.has_keypoint():
            raise NotImplementedError("implementation='loss-zeroing' supports box heads only")
        tic = time.perf_counter()
        proposals, _, labels, regression_targets, matched_gt = self.label_rois(proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(x)
        cls_loss, box_loss = per_roi_loss_terms(
            class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets)
        )
        mining = _mining_loss(cls_loss, box_loss, self.mining_loss).detach()
        hard, _ = self._select(mining, proposals, labels, matched_gt, image_shapes)
        self.last_mining_seconds = time.perf_counter() - tic
        keep = torch.zeros_like(cls_loss)
        keep[hard] = 1.0
        # Every RoI's activations and graph are kept; the unselected ones only get zero gradient.
        num = max(hard.numel(), 1)
        losses = {"loss_classifier": (cls_loss * keep).sum() / num, "loss_box_reg": (box_loss * keep).sum() / num}
        losses.update(self._mining_stats)
        return [], losses


def enable_ohem(
    model: nn.Module,
    batch_size_per_image: int = 64,
    nms_iou: float | None = 0.7,
    mining_loss: str = "cls+box",
    bg_iou_low: float = 0.0,
    max_rois_per_chunk: int = 1024,
    nms_per_label: bool = False,
    readonly_dropout: bool = True,
    implementation: str = "two-pass",
    readonly_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Swap ``OHEMRoIHeads`` into a torchvision two-stage detector in place; returns the model.

    Every module and weight of the old ``model.roi_heads`` is kept (the new head holds the same
    module objects), as are its matching thresholds, box coder and inference settings.
    """
    model.roi_heads = OHEMRoIHeads.from_roi_heads(
        _roi_heads_of(model),
        batch_size_per_image=batch_size_per_image,
        bg_iou_low=bg_iou_low,
        nms_iou=nms_iou,
        mining_loss=mining_loss,
        max_rois_per_chunk=max_rois_per_chunk,
        nms_per_label=nms_per_label,
        readonly_dropout=readonly_dropout,
        implementation=implementation,
        readonly_dtype=readonly_dtype,
    )
    return model


def enable_heuristic_sampling(
    model: nn.Module,
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.25,
    bg_iou_low: float = 0.1,
) -> nn.Module:
    """Fast R-CNN's sampler in place: ``positive_fraction`` fg, bg from IoU in [bg_iou_low, 0.5)."""
    model.roi_heads = FastRCNNRoIHeads.from_roi_heads(
        _roi_heads_of(model),
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        bg_iou_low=bg_iou_low,
    )
    return model


def _roi_heads_of(model: nn.Module) -> RoIHeads:
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, RoIHeads):
        raise TypeError(
            f"expected a torchvision two-stage detector with a RoIHeads at .roi_heads, got {type(model).__name__}"
        )
    return heads


def _poolable(
    features: dict[str, torch.Tensor], proposals: list[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Inputs roi_align can take: under CPU autocast, float32, since torchvision's CPU kernel has
    no bfloat16 (on CUDA, torchvision's own autocast rule for roi_align makes this same cast)."""
    if torch.is_autocast_enabled("cpu") and any(f.device.type == "cpu" for f in features.values()):
        return {k: v.float() for k, v in features.items()}, [p.float() for p in proposals]
    return features, proposals


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=1e-12)
