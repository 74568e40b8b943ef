"""Evaluation: score a detector (VOC AP; COCO metrics will join) and measure its loss over all RoIs."""

from ohem.evaluation.roi_loss import mean_roi_loss
from ohem.evaluation.voc import ImageAnnotations, ImageDetections, average_precision, voc_evaluate

__all__ = ["ImageAnnotations", "ImageDetections", "average_precision", "mean_roi_loss", "voc_evaluate"]
