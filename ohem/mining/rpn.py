"""OHEM for the region proposal network: loss-ranked anchors in place of the random 1:1 sampler.

Beyond the paper, which mines RoIs only. torchvision's RPN trains on 256 random anchors per image,
half positive at most. ``OHEMRegionProposalNetwork`` keeps everything else of the RPN (head, anchor
generator, matcher, proposal generation, evaluation) and, in training, replaces that sampler:

1. label every anchor with torchvision's own matcher (fg IoU >= 0.7, bg < 0.3, in between ignored,
   low-quality matches allowed) and box coder, as ``RegionProposalNetwork`` does;
2. compute each non-ignored anchor's loss (objectness BCE + smooth-L1 box term on positives, beta
   1/9) from the head outputs the forward already has, detached and under ``no_grad``: no graph;
3. ``select_hard_examples`` keeps, per image, the ``batch_size_per_image`` highest-loss anchors after
   greedy NMS at ``nms_iou`` among the anchors;
4. torchvision's loss (BCE averaged over the selected, box smooth-L1 summed over the selected
   positives / number selected) on those anchors only, so only they get gradients.

NMS runs on the anchor boxes, not the decoded proposals: an anchor is the training example (its
label and box target are defined by the anchor's IoU with the ground truth), and anchor geometry
is fixed, so neighbouring anchors that see nearly the same image region and target are the
redundancy NMS removes. Decoded proposals move with the current (early on, random) deltas, so
NMS on them would make the de-duplication depend on noise.

The RPN head runs over all anchors in the usual forward anyway (it is one convolution), so unlike
the RoI case there is no second pass: ranking only reads its detached outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from ohem.events import clock, current_storage
from ohem.mining.select import select_hard_examples


def per_anchor_loss(
    objectness: torch.Tensor,
    pred_bbox_deltas: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
) -> torch.Tensor:
    """Each anchor's loss (BCE + smooth-L1 on positives, beta 1/9), detached; 0 on ignored anchors.

    Args:
        objectness: (A,) or (A, 1) logits; pred_bbox_deltas: (A, 4); labels: (A,) 1 fg, 0 bg, -1
            ignored; regression_targets: (A, 4). All anchors of all images, concatenated.

    Its mean over some anchors is ``loss_objectness + loss_rpn_box_reg`` of torchvision's formula
    on those anchors, so the ranking is by the very loss the selected anchors are trained on.
    """
    with torch.no_grad():
        # float: ranking under autocast should not depend on half-precision rounding of the logits.
        logits = objectness.detach().reshape(-1).float()
        deltas = pred_bbox_deltas.detach().reshape(-1, 4).float()
        labels = labels.reshape(-1)
        cls_loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).to(logits.dtype), reduction="none")
        box_loss = F.smooth_l1_loss(deltas, regression_targets.float(), beta=1 / 9, reduction="none").sum(dim=1)
        loss = cls_loss + torch.where(labels > 0, box_loss, torch.zeros_like(box_loss))
        return torch.where(labels >= 0, loss, torch.zeros_like(loss))


class OHEMRegionProposalNetwork(RegionProposalNetwork):
    """``RegionProposalNetwork`` whose training loss is on hard anchors instead of sampled ones.

    ``batch_size_per_image`` anchors per image (``fg_bg_sampler.batch_size_per_image``; its
    ``positive_fraction`` is unused: the fg/bg mix is whatever the losses give). ``nms_iou=None``
    turns NMS off. The loss dict keeps torchvision's keys (losses only); the detached ``rpn_ohem_*``
    statistics of the last training step are in ``last_statistics`` and go to the open
    ``ohem.events.EventStorage`` (if any), with the selection (``rpn_mining``) and the time of ranking
    and selection (``time_mining``).
    """

    def __init__(self, *args, nms_iou: float | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nms_iou = nms_iou
        self.last_statistics: dict[str, Tensor] = {}

    @classmethod
    def from_rpn(
        cls, rpn: RegionProposalNetwork, nms_iou: float | None, batch_size_per_image: int | None = None
    ) -> OHEMRegionProposalNetwork:
        """A new RPN of this class holding the same modules and settings as ``rpn``.

        ``batch_size_per_image=None`` keeps ``rpn``'s own (torchvision's default is 256).
        """
        sampler = rpn.fg_bg_sampler
        new = cls(
            rpn.anchor_generator,
            rpn.head,
            fg_iou_thresh=rpn.proposal_matcher.high_threshold,
            bg_iou_thresh=rpn.proposal_matcher.low_threshold,
            batch_size_per_image=sampler.batch_size_per_image if batch_size_per_image is None else batch_size_per_image,
            positive_fraction=sampler.positive_fraction,
            pre_nms_top_n=dict(rpn._pre_nms_top_n),
            post_nms_top_n=dict(rpn._post_nms_top_n),
            nms_thresh=rpn.nms_thresh,
            score_thresh=rpn.score_thresh,
            nms_iou=nms_iou,
        )
        # The same objects, so any non-default matcher (e.g. allow_low_quality_matches) or coder carries over.
        new.proposal_matcher = rpn.proposal_matcher
        new.box_coder = rpn.box_coder
        new.box_similarity = rpn.box_similarity
        new.min_size = rpn.min_size
        if new.num_per_image < 0:
            raise ValueError(f"batch_size_per_image must be >= 0, got {new.num_per_image}")
        return new.train(rpn.training)

    @property
    def num_per_image(self) -> int:
        return self.fg_bg_sampler.batch_size_per_image

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        if not self.training:
            return super().forward(images, features, targets)
        if targets is None:
            raise ValueError("targets should not be None")
        # torchvision's RPN forward, written out: proposals as it makes them, then the loss on mined anchors
        levels = list(features.values())
        objectness, pred_bbox_deltas = self.head(levels)
        anchors = self.anchor_generator(images, levels)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # no backprop through the proposals (Faster R-CNN's approximate joint training)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
        regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)

        tic = clock(objectness.device)
        all_labels = torch.cat(labels)
        losses = per_anchor_loss(objectness, pred_bbox_deltas, all_labels, torch.cat(regression_targets))
        candidates = torch.nonzero(all_labels >= 0).squeeze(1)
        selected = self.select_anchors(losses, candidates, anchors)
        storage = current_storage()
        if storage is not None:
            storage.put_scalar("time_mining", clock(objectness.device) - tic)
            storage.put_record("rpn_mining", {"selected": selected, "losses": losses, "labels": all_labels})
        loss_objectness, loss_rpn_box_reg = selected_anchor_loss(
            objectness, pred_bbox_deltas, labels, regression_targets, selected
        )
        zero, detached = losses.new_zeros(()), losses.detach()
        self.last_statistics = {  # sizes known on the host: no value is read back
            "rpn_ohem_fg_fraction": (all_labels[selected] > 0).float().mean() if selected.numel() else zero,
            "rpn_ohem_all_loss": detached[candidates].mean() if candidates.numel() else zero,
        }
        if storage is not None:
            storage.put_statistics(self.last_statistics)
        return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}

    def select_anchors(self, losses: torch.Tensor, candidates: torch.Tensor, anchors: list[torch.Tensor]) -> Tensor:
        """Hard anchors among ``candidates`` (the non-ignored ones): indices into the concatenated anchors
        of all images, per image by loss, after NMS among anchors, at most ``num_per_image`` each."""
        # filled on the device (a tensor built from host counts would be a blocking copy on CUDA)
        image_ids = torch.cat([torch.full((a.shape[0],), i, device=losses.device) for i, a in enumerate(anchors)])
        boxes = torch.cat(anchors)
        picked = select_hard_examples(
            losses[candidates],
            boxes[candidates],
            image_ids[candidates],
            self.num_per_image,
            nms_iou=self.nms_iou,
            num_images=len(anchors),
        )
        return candidates[picked]


def selected_anchor_loss(
    objectness: torch.Tensor,
    pred_bbox_deltas: torch.Tensor,
    labels: list[torch.Tensor],
    regression_targets: list[torch.Tensor],
    selected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's RPN loss on the ``selected`` anchors (indices into all anchors, concatenated):
    (objectness BCE mean, box smooth-L1 (beta 1/9) sum over selected positives / number selected)."""
    objectness = objectness.flatten()
    if selected.numel() == 0:
        # No anchor to train on (batch_size_per_image=0): a zero that keeps the graph.
        return objectness.sum() * 0, pred_bbox_deltas.sum() * 0
    all_labels = torch.cat(labels)
    targets = torch.cat(regression_targets)
    pos = selected[all_labels[selected] > 0]
    box_loss = F.smooth_l1_loss(pred_bbox_deltas[pos], targets[pos], beta=1 / 9, reduction="sum") / selected.numel()
    objectness_loss = F.binary_cross_entropy_with_logits(objectness[selected], all_labels[selected])
    return objectness_loss, box_loss
