"""The evaluator's inputs made plain: numpy arrays from tensors, image ids as int/str with one sort
order, JSON-safe values, and the checks on records' flags and on detections (one clear
``ValueError`` naming the image)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np


def to_numpy(x: Any, dtype=None) -> np.ndarray:
    """numpy view of a tensor / array / list (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def id_sort_key(image_id: Any):
    """Image ids sort numerically when they are numbers, lexicographically when they are names."""
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return (0, int(image_id), "")
    return (1, 0, str(image_id))


def normalize_id(image_id: Any):
    """Plain ``int``/``str`` image ids from numpy scalars or 0-d tensors."""
    if isinstance(image_id, (str, int)) and not isinstance(image_id, bool):
        return image_id
    if hasattr(image_id, "item"):
        return image_id.item()
    return image_id


def unique_class_keys(names: Sequence[str]) -> List[str]:
    """Class names as dict keys: a repeated name gets its index appended."""
    seen: Dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [n if seen[n] == 1 else f"{n} ({i})" for i, n in enumerate(names)]


def json_safe(x):
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def flags(x, n: int) -> np.ndarray:
    if x is None:
        return np.zeros(n, bool)
    a = np.asarray(x, bool).reshape(-1)
    if len(a) != n:
        raise ValueError(f"record flags have {len(a)} entries for {n} boxes")
    return a


def check_detections(det: Mapping[str, Any], num_classes: int, image_id) -> tuple:
    try:
        boxes = to_numpy(det["boxes"], np.float64)
        scores = to_numpy(det["scores"], np.float64).reshape(-1)
        labels_raw = to_numpy(det["labels"])
    except KeyError as e:
        raise ValueError(f"update: detections of image {image_id!r} lack {e.args[0]!r} "
                         "(need boxes, scores, labels)") from None
    boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4))
    labels_raw = labels_raw.reshape(-1)
    if not (len(boxes) == len(scores) == len(labels_raw)):
        raise ValueError(f"update: image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores, "
                         f"{len(labels_raw)} labels")
    if len(labels_raw) and not np.all(np.asarray(labels_raw, np.float64) == np.round(np.asarray(labels_raw, np.float64))):
        raise ValueError(f"update: image {image_id!r}: labels must be integers")
    labels = labels_raw.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"update: image {image_id!r}: label outside 0..{num_classes - 1} "
                         "(labels are 0-based dataset classes, background removed)")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"update: image {image_id!r}: non-finite box or score")
    if len(boxes) and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise ValueError(f"update: image {image_id!r}: boxes must be xyxy with x2 >= x1 and y2 >= y1")
    return boxes, scores, labels
