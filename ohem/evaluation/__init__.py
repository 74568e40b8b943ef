"""Evaluation: run a detector over a dataset and score it (VOC AP here; COCO metrics will join)."""

from ohem.evaluation.voc import ImageAnnotations, ImageDetections, average_precision, voc_evaluate

__all__ = ["ImageAnnotations", "ImageDetections", "average_precision", "voc_evaluate"]
