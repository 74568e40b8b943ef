"""Evaluation: score a detector (VOC AP, COCO AP), read and write detections files, and measure
its loss over all RoIs, sort its detections into kinds of error; a proposals file's recall."""

from ohem.evaluation.coco import coco_evaluate
from ohem.evaluation.detections_file import read_detections, write_detections
from ohem.evaluation.errors import KINDS, classify_detections, count_errors
from ohem.evaluation.recall import proposal_recall
from ohem.evaluation.roi_loss import all_roi_mean_loss
from ohem.evaluation.voc import average_precision, voc_evaluate
from ohem.structures import ImageAnnotations, ImageDetections  # re-exported: where they were before ohem.structures

__all__ = [
    "KINDS",
    "classify_detections",
    "ImageAnnotations",
    "ImageDetections",
    "average_precision",
    "coco_evaluate",
    "count_errors",
    "all_roi_mean_loss",
    "proposal_recall",
    "read_detections",
    "voc_evaluate",
    "write_detections",
]
