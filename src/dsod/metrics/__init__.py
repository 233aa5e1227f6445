"""Evaluation: VOC (2007 11-point, 2010+ all-point) and COCO box metrics, plots, detection files.

One :class:`Evaluator` serves training-time validation and ``dsod val``; any model's output can be
scored from a COCO-results JSON with :func:`score_detections_file`.
"""
from .coco import COCO_STAT_NAMES
from .detections_io import (
                            DetectionsFileError,
                            read_detections_json,
                            score_detections_file,
                            update_from_detections_file,
                            write_detections_json,
)
from .evaluator import Evaluator
from .voc import ap_11point, ap_area, evaluate_voc, iou_pairs

__all__ = ["Evaluator", "score_detections_file", "write_detections_json", "read_detections_json",
           "update_from_detections_file", "DetectionsFileError", "COCO_STAT_NAMES", "evaluate_voc",
           "ap_11point", "ap_area", "iou_pairs"]
