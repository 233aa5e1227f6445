"""The contract between dataset readers, the training pipeline and the evaluator.

Readers (VOC, COCO, YOLO) turn annotations into ``ImageRecord``s in original-image pixels; the
training pipeline turns records into network inputs; the evaluator scores detections against them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

ImageId = Union[str, int]  # VOC/YOLO: the image file's stem; COCO: the image's (64-bit) id


@dataclass
class ImageRecord:
    image_id: ImageId
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (G, 4) float32 xyxy in original pixels
    labels: np.ndarray  # (G,) int64 class index in ``DatasetInfo.names`` (0-based, no background)
    difficult: np.ndarray  # (G,) bool: VOC "difficult" (used in training, ignored in evaluation)
    iscrowd: np.ndarray  # (G,) bool: COCO crowd regions (excluded from training, kept for evaluation)

    @staticmethod
    def empty_arrays():
        return (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool),
                np.zeros((0,), bool))


@dataclass
class DatasetInfo:
    names: List[str]  # class names; label i <-> names[i]
    format: str  # "voc" | "coco" | "yolo"
    # COCO: the dataset's category id of each label (non-contiguous, e.g. 1..90 with gaps); kept for
    # evaluation and checkpoints. None for VOC/YOLO, where the id of label i is i.
    category_ids: Optional[List[int]] = None
    root: Optional[Path] = None
    problems: List[str] = field(default_factory=list)  # "file: reason" lines found while reading

    def category_id(self, label: int) -> int:
        return self.category_ids[label] if self.category_ids is not None else int(label)
