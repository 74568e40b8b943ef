"""``SamplingRoIHeads``: torchvision's ``RoIHeads`` whose training pass is written out here, with the
choice of RoIs left to a sampler (``ohem.mining.sampler``). One training forward:

1. ``label_rois``: every proposal plus the gt boxes, labelled (no sampling); when the sampler's
   ``presample`` returns rows, only those go on (``ohem.mining.contract.presampled``);
2. ``readonly_pass``: when the sampler asks for losses (its ``readonly`` settings), the box head over
   all of them under ``no_grad``, one loss per RoI (a ``PerRoILoss``);
3. ``sampler.sample``: the rows to train on, and a weight per row, checked and sorted into image
   order (``ohem.mining.contract``);
4. the trainable pass: pool those rows (on the CPU the read-only pass's pooling is reused), box head,
   box predictor, and the sampler's ``roi_loss`` of that pass (by default the weighted mean with the
   head's own smooth-L1 ``box_loss_beta``); torchvision's mask and keypoint losses on the sample's
   foreground.

The loss dict holds losses only: the ``ohem_*`` statistics of a step with a read-only pass go to the
open ``ohem.events.EventStorage`` (``put_statistics``) and to ``last_statistics``.

Evaluation is ``RoIHeads``' own code path, untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads, keypointrcnn_loss, maskrcnn_loss

from ohem.events import EventStorage, clock, current_storage
from ohem.mining.contract import checked_sample, presampled, trainable_pass_losses
from ohem.mining.pooling import can_reuse_pooling, pooled_with_gradient, rows_of
from ohem.mining.readonly import PerRoILoss, readonly_pass
from ohem.mining.rois import LabelledRoIs, elementwise_iou, label_rois
from ohem.mining.sampler import Sample, SamplerBase, TrainedRows
from ohem.models.box_targets import BoxTargetNorm, raw_box_deltas


class SamplingRoIHeads(RoIHeads):
    """``RoIHeads`` that trains on the RoIs ``sampler`` picks, with Fast R-CNN's box-loss settings:
    smooth-L1 ``box_loss_beta`` (torchvision hard-codes 1/9) and, after ``use_empirical_box_targets``,
    normalised box targets. When the sampler ran a read-only pass, its detached ``ohem_*`` statistics
    are kept in ``last_statistics`` (the last training step's; for a loop of your own) and put in the
    open ``ohem.events.EventStorage`` (if any), with the mined RoIs (``roi_mining``) and the time of
    labelling, read-only pass and sampling (``time_mining``). The loss dict holds losses only."""

    def __init__(self, *args, sampler: SamplerBase, box_loss_beta: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.last_statistics: dict[str, Tensor] = {}
        self.box_loss_beta = box_loss_beta
        self.box_target_norm: BoxTargetNorm | None = None

    def use_empirical_box_targets(self) -> None:
        """Regress raw deltas normalised per class (Fast R-CNN); the statistics are set by the trainer."""
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.box_target_norm = BoxTargetNorm(self.box_predictor.cls_score.out_features)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        features, proposals = poolable(features, proposals)
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("SamplingRoIHeads: targets are needed in training mode")
        return [], self.training_losses(features, proposals, image_shapes, targets)

    def training_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        check_target_types(self, targets)
        storage, device, sampler = current_storage(), proposals[0].device, self.sampler
        tic = clock(device)
        rois = presampled(sampler, label_rois(self, proposals, targets, sampler.bg_iou_low))
        readonly = sampler.readonly
        reuse = readonly is not None and can_reuse_pooling(self, features)
        per_roi = None
        if rois.labels.numel() == 0:  # no gt and no proposal (or none a candidate): no RoI to rank or sample
            per_roi = empty_per_roi_loss(features) if readonly is not None else None
            sample = Sample(rois.labels.new_zeros(0))
        else:
            if readonly is not None:
                per_roi = readonly_pass(self, features, rois, image_shapes, readonly, self.box_loss_beta, reuse)
            chosen = sampler.sample(rois, per_roi, storage.iteration if storage else None)
            sample = checked_sample(sampler, chosen, rois)
        seconds = clock(device) - tic
        if sample.rows.numel() == 0:  # a step with no RoI: the RPN trains, the RoI head's loss is a zero
            losses = self.no_roi_losses(features)
        else:
            losses = self.trainable_pass(features, rois, sample, per_roi if reuse else None, image_shapes, targets)
        self.last_statistics = mining_statistics(rois, per_roi, sample) if per_roi is not None else {}
        if per_roi is not None and storage is not None:
            storage.put_statistics(self.last_statistics)
            report_mining(
                storage, rois, per_roi, sample, image_shapes, seconds, self.last_statistics["ohem_all_roi_loss"]
            )
        return losses

    def trainable_pass(
        self,
        features: dict[str, Tensor],
        rois: LabelledRoIs,
        sample: Sample,
        reused: PerRoILoss | None,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The losses of the sampled rows (pooling reused from the read-only pass's ``reused``, if given)."""
        boxes, matched_idxs, labels, _ = rois.per_image(sample.rows)
        if reused is not None:
            rows = rows_of(reused.pooled, sample.rows)  # type: ignore[arg-type]  # reuse: pooled kept
            pooled = pooled_with_gradient(self.box_roi_pool, features, boxes, image_shapes, rows)
        else:
            pooled = self.box_roi_pool(features, boxes, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        losses = trainable_pass_losses(self.sampler, TrainedRows(rois, sample, class_logits, box_regression, self))
        losses.update(self.mask_and_keypoint_losses(features, boxes, matched_idxs, labels, image_shapes, targets))
        return losses

    def no_roi_losses(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The RoI losses of a step without RoIs: zeros connected to the heads' weights (their gradient
        is zero; a DDP process without RoIs still reduces every gradient)."""
        zero = connected_zero(next(iter(features.values())), self.box_head, self.box_predictor)
        losses = {"loss_classifier": zero, "loss_box_reg": zero.clone()}
        if self.has_mask():
            losses["loss_mask"] = connected_zero(zero, self.mask_head, self.mask_predictor)
        if self.has_keypoint():
            losses["loss_keypoint"] = connected_zero(zero, self.keypoint_head, self.keypoint_predictor)
        return losses

    def mask_and_keypoint_losses(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        matched_idxs: list[Tensor],
        labels: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """torchvision's mask and keypoint losses on the sample's foreground RoIs (unweighted)."""
        losses: dict[str, Tensor] = {}
        if not (self.has_mask() or self.has_keypoint()):
            return losses
        fg = [torch.where(label > 0)[0] for label in labels]
        fg_boxes, fg_matched = [b[i] for b, i in zip(boxes, fg)], [m[i] for m, i in zip(matched_idxs, fg)]
        if self.has_mask():
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, fg_boxes, image_shapes)))
            gt_masks, gt_labels = [t["masks"] for t in targets], [t["labels"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(logits, fg_boxes, gt_masks, gt_labels, fg_matched)
        if self.has_keypoint():
            features_of_rois = self.keypoint_roi_pool(features, fg_boxes, image_shapes)
            logits = self.keypoint_predictor(self.keypoint_head(features_of_rois))
            gt_keypoints = [t["keypoints"] for t in targets]
            losses["loss_keypoint"] = keypointrcnn_loss(logits, fg_boxes, gt_keypoints, fg_matched)
        return losses

    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_shapes: list
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        deltas = raw_box_deltas(self, box_regression)
        return super().postprocess_detections(class_logits, deltas, proposals, image_shapes)


def check_target_types(heads: RoIHeads, targets: list[dict[str, Tensor]]) -> None:
    """torchvision's checks of the target dtypes (its training forward makes them)."""
    for t in targets:
        if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
            raise TypeError(f"target boxes must of float type, instead got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must of int64 type, instead got {t['labels'].dtype}")
        if heads.has_keypoint() and t["keypoints"].dtype != torch.float32:
            raise TypeError(f"target keypoints must of float type, instead got {t['keypoints'].dtype}")


def connected_zero(like: Tensor, *modules: nn.Module | None) -> Tensor:
    """A float zero (on ``like``'s device) that depends on one element of each trainable weight of ``modules``."""
    zero = like.new_zeros((), dtype=torch.float32)
    for module in modules:
        for p in module.parameters() if module is not None else ():
            if p.requires_grad:
                zero = zero + p.reshape(-1)[0].float() * 0.0
    return zero


def empty_per_roi_loss(features: dict[str, Tensor]) -> PerRoILoss:
    """The read-only pass's result over no RoI."""
    empty = next(iter(features.values())).new_zeros(0, dtype=torch.float32)
    return PerRoILoss(empty, empty, empty, None)


def mining_statistics(rois: LabelledRoIs, per_roi: PerRoILoss, sample: Sample) -> dict[str, Tensor]:
    """Detached statistics of a step with a read-only pass: mean (cls + box) loss over all RoIs and over
    the sampled ones, fg shares, and the spread (std over all RoIs) of the foreground probability."""
    losses, rows, zero = per_roi.cls + per_roi.box, sample.rows, per_roi.cls.new_zeros(())
    return {
        "ohem_score_spread": per_roi.fg_scores.std() if per_roi.fg_scores.numel() > 1 else zero,
        "ohem_all_roi_loss": losses.mean() if losses.numel() else zero,
        "ohem_mined_loss": losses[rows].mean() if rows.numel() else zero,
        "ohem_mined_fg_fraction": (rois.labels[rows] > 0).float().mean() if rows.numel() else zero,
        "ohem_all_fg_fraction": (rois.labels > 0).float().mean() if losses.numel() else zero,
    }


def report_mining(
    storage: EventStorage,
    rois: LabelledRoIs,
    per_roi: PerRoILoss,
    sample: Sample,
    image_shapes: list,
    seconds: float,
    all_roi_loss: Tensor,
) -> None:
    """The sampled RoIs of one forward and the mean loss over all RoIs, detached and left on their device
    (``MiningRecorder`` reads them on the host only when it writes a record; boxes in the resized
    ``image_shapes`` frames)."""
    rows = sample.rows
    boxes = rois.boxes[rows].detach()
    storage.put_scalar("time_mining", seconds)
    storage.put_record(
        "roi_mining",
        {
            "image_ids": rois.image_ids[rows],
            "boxes": boxes,
            "labels": rois.labels[rows],
            "losses": (per_roi.cls + per_roi.box)[rows],
            "iou": elementwise_iou(boxes, rois.matched_gt[rows]),
            "image_shapes": list(image_shapes),
            "all_roi_loss": all_roi_loss,
        },
    )


def poolable(features: dict, proposals: list[Tensor]) -> tuple[dict, list[Tensor]]:
    """Inputs roi_align takes under CPU autocast: float32 (torchvision's CPU kernel has no bfloat16;
    on CUDA, torchvision's own autocast rule for roi_align makes this same cast)."""
    if torch.is_autocast_enabled("cpu") and any(f.device.type == "cpu" for f in features.values()):
        return {k: v.float() for k, v in features.items()}, [p.float() for p in proposals]
    return features, proposals
