"""Detections as a COCO-results JSON file, so that any model's output can be scored.

The file is a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in the
original image's pixels. ``image_id``: for VOC and YOLO datasets the image file's stem (a string), for
COCO datasets the dataset's own image id. ``category_id``: for VOC and YOLO the class index in
``DatasetInfo.names``, for COCO the dataset's category id (``DatasetInfo.category_id(label)``). Other
keys are ignored. Within an image, detections keep the file's order (it breaks score ties).

Reading is strict by default: the first bad entry (unknown image_id or category_id, bbox not four
finite numbers with w, h >= 0, score not a finite number) raises :class:`DetectionsFileError`, a
``ValueError`` whose one-line message names the file and the entry. With ``strict=False`` bad entries
are skipped and counted instead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from ..errors import DsodError
from ..files import atomic_write_text
from .arrays import json_safe, normalize_id, to_numpy
from .evaluator import Evaluator

if TYPE_CHECKING:
    from ..data.records import DatasetInfo, ImageRecord


class DetectionsFileError(DsodError, ValueError):
    """A detections file that cannot be scored; the message is one line naming file and entry."""


def write_detections_json(path: Union[str, Path], info: DatasetInfo, image_ids: Sequence[Any],
                          detections: Sequence[Mapping[str, Any]]) -> Path:
    """Write detections (PostProcessor dicts: xyxy pixel ``boxes``, ``scores``, 0-based ``labels``) of
    ``image_ids`` as a COCO-results JSON list, atomically. Returns ``path``."""
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids but {len(detections)} detection dicts")
    out: List[str] = []
    for image_id, det in zip(image_ids, detections):
        image_id = normalize_id(image_id)
        b = to_numpy(det["boxes"], np.float64).reshape(-1, 4)
        s = to_numpy(det["scores"], np.float64).reshape(-1).tolist()
        lab = to_numpy(det["labels"]).reshape(-1).astype(np.int64).tolist()
        xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()
        jid = json.dumps(image_id)
        for bb, sc, lb in zip(xywh, s, lab):
            out.append(f'{{"image_id": {jid}, "category_id": {int(info.category_id(lb))}, '
                       f'"bbox": {json.dumps(bb)}, "score": {json.dumps(sc)}}}')
    return atomic_write_text(path, "[\n" + ",\n".join(out) + "\n]\n")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_detections_json(path: Union[str, Path], info: DatasetInfo, records: Sequence[ImageRecord],
                         strict: bool = True) -> Tuple[List[Any], List[Dict[str, np.ndarray]], List[str]]:
    """Parse a COCO-results file against the records: ``(image_ids, detections, problems)`` with one
    PostProcessor-style dict per image that has detections, and one message per skipped entry
    (always empty when ``strict``; the first problem raises instead)."""
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DetectionsFileError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise DetectionsFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DetectionsFileError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, list):
        raise DetectionsFileError(f"{path}: expected a JSON list of detections (COCO results format), "
                                  f"got a {type(data).__name__}")

    ids: Dict[Any, Any] = {normalize_id(r.image_id): normalize_id(r.image_id) for r in records}
    str_ids = {str(k): k for k in ids}  # "9" -> 9 for COCO ids, 12 -> "12" for numeric stems
    label_of = {int(info.category_id(c)): c for c in range(len(info.names))}

    per_image: Dict[Any, List[Tuple[List[float], float, int]]] = {}
    problems: List[str] = []

    def bad(i: int, msg: str) -> None:
        text = f"{path}: entry {i}: {msg}"
        if strict:
            raise DetectionsFileError(text)
        problems.append(text)

    for i, e in enumerate(data):
        if not isinstance(e, dict):
            bad(i, f"not an object: {json.dumps(e)[:80]}")
            continue
        img = e.get("image_id")
        key = None
        if isinstance(img, (str, int)) and not isinstance(img, bool):
            key = img if img in ids else str_ids.get(str(img))
        if key is None:
            bad(i, f"unknown image_id {json.dumps(img)[:80]}")
            continue
        cat = e.get("category_id")
        if isinstance(cat, float) and cat.is_integer():
            cat = int(cat)
        if not isinstance(cat, int) or isinstance(cat, bool) or cat not in label_of:
            bad(i, f"unknown category_id {json.dumps(cat)[:80]}")
            continue
        bb = e.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(_number(v) for v in bb) and bb[2] >= 0 and bb[3] >= 0):
            bad(i, f"malformed bbox {json.dumps(bb)[:80]} (need [x, y, w, h], finite, w and h >= 0)")
            continue
        sc = e.get("score")
        if not _number(sc):
            bad(i, f"malformed score {json.dumps(sc)[:80]} (need a finite number)")
            continue
        x, y, w, h = (float(v) for v in bb)
        per_image.setdefault(key, []).append(([x, y, x + w, y + h], float(sc), label_of[cat]))

    image_ids, dets = [], []
    for key, items in per_image.items():
        image_ids.append(key)
        dets.append({"boxes": np.array([t[0] for t in items], np.float64).reshape(-1, 4),
                     "scores": np.array([t[1] for t in items], np.float64),
                     "labels": np.array([t[2] for t in items], np.int64)})
    return image_ids, dets, problems


def update_from_detections_file(evaluator: Evaluator, path: Union[str, Path], strict: bool = True) -> List[str]:
    """Feed a COCO-results file into ``evaluator`` (e.g. to print its table or plots afterwards).
    Returns the messages of skipped entries (empty when ``strict``)."""
    image_ids, dets, problems = read_detections_json(path, evaluator.info, evaluator.records, strict=strict)
    evaluator.update(image_ids, dets)
    return problems


class ScoredDetections(dict):
    """The results dict of :func:`score_detections_file`, which also carries the evaluator that produced
    it (``.evaluator``) and its output methods, so a caller can print the table or plot the curves."""

    def __init__(self, results: Dict[str, Any], evaluator: Evaluator):
        super().__init__(results)
        self.evaluator = evaluator

    def compute(self) -> Dict[str, Any]:
        return self

    def format_table(self) -> str:
        return self.evaluator.format_table()

    def plot(self, out_dir: Union[str, Path], per_class_files: bool = True) -> List[Path]:
        return self.evaluator.plot(out_dir, per_class_files=per_class_files)

    def write_json(self, path: Union[str, Path]) -> Path:
        """Write these results (including the skip counts) atomically, NaN -> null."""
        return atomic_write_text(path, json.dumps(json_safe(dict(self)), indent=2, allow_nan=False) + "\n")


def score_detections_file(info: DatasetInfo, records: Sequence[ImageRecord], path: Union[str, Path],
                          strict: bool = True, **evaluator_kwargs) -> ScoredDetections:
    """Score a COCO-results JSON file against ``records`` with :class:`Evaluator` (keyword arguments go
    to it, e.g. ``coco_gt=``). Returns ``compute()``'s dict plus ``detections_file``,
    ``num_skipped`` and ``skipped`` (the first 20 messages), as a :class:`ScoredDetections`."""
    ev = Evaluator(info, records, **evaluator_kwargs)
    problems = update_from_detections_file(ev, path, strict=strict)
    results = dict(ev.compute())
    results["detections_file"] = str(path)
    results["num_skipped"] = len(problems)
    results["skipped"] = problems[:20]
    return ScoredDetections(results, ev)
