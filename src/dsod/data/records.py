"""The contract between dataset readers, the training pipeline and the evaluator.

Readers (VOC, COCO, YOLO) turn annotations into ``ImageRecord``s in original-image pixels; the
training pipeline turns records into network inputs; the evaluator scores detections against them.
This module also holds what every reader shares, so that readers depend on it (and ``images``) only
and ``spec`` depends on the readers, never the other way round: the error type, the problem report
(``SplitReport``), the reader-neutral raw records and the box checks.

Problems: everything odd in the data is reported as one line ``"<file>: <reason>"``. Problems (the data
was skipped or changed: corrupt image, zero-size box, box clipped to the image, unknown class ...) are
counted per kind in the split's ``SplitReport``; the broken sample or box is skipped and reading goes
on. With ``strict=True`` the first problem raises ``DatasetError`` with that line instead. Notes (a path
fallback, classes collected from the data, an image without a label file = a negative) are
informational and never raise. The same problem seen more than ``SUMMARY_AFTER`` times (200 images
not found because they are in another folder) is listed as one line: the first occurrence, the count,
the first files and the likely fix; ``all_problems`` keeps every line.

Box conventions (all readers, see ``check_boxes``): boxes are ``xyxy`` float32 in original-image
pixels. VOC coordinates are kept exactly as written in the XML: the devkit's 1-based pixel indices
are *not* shifted by 1, as in SSD/DSOD's Caffe data preparation (ORIGINAL.md §1.8 data layer reads the XML
values unchanged); the evaluator computes IoU on these same boxes, so the choice cannot bias mAP.
Zero-size boxes are skipped; inverted boxes (x2 < x1 or y2 < y1, e.g. a negative COCO width) are
skipped, not swapped: they mean the annotation is broken, and guessing would train on a wrong box;
boxes partly outside the image are clipped to it; boxes entirely outside are skipped. Each is counted.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DsodError
from .images import ImageError, image_size

ImageId = Union[str, int]  # VOC/YOLO: the image file's stem; COCO: the image's (64-bit) id

# Sub-pixel overshoot (e.g. COCO's x + w = 640.0000001) is clipped silently; more is counted.
CLIP_TOLERANCE = 1e-3
# A problem repeated more often than this is one summary line (the first files are named in it).
SUMMARY_AFTER = 3

# What usually causes a repeated problem, for its summary line.
LIKELY_FIX = {
    "missing image": "put the images beside the annotations (or in JPEGImages/ or images/ next to them), "
                     "or name their folder with images: in a dataset YAML",
    "image without annotation": "each image needs an annotation file of the same name (one without "
                                "<object> makes it a negative); or remove the images",
    "missing annotation file": "the split list names images without an annotation file: fix the list or "
                               "add the files",
    "unknown class": "add the class to names: in the dataset YAML, or leave names: out to collect the "
                     "classes from the data",
    "label without image": "remove the stray label files, or add their images",
    "zero-size box": "fix or delete these boxes in the annotation tool",
    "inverted box": "the coordinates are swapped or corrupt: re-export the annotations",
    "box clipped to the image": "boxes past the image border: were the images resized after annotating?",
    "box outside the image": "boxes outside their image: were images resized or renamed after annotating?",
    "unusable image": "re-encode or remove these image files",
    "malformed annotation file": "re-export these annotation files",
    "un-normalised coordinates": "YOLO values are fractions of the image width/height (0-1), not pixels",
    "malformed label line": "YOLO label lines are 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 ...'",
    "duplicate id": "remove the repeated lines from the split list",
}


class DatasetError(DsodError, ValueError):
    """A dataset that cannot be read (or, with ``strict=True``, any problem); the message is one line
    naming the file and the problem."""


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


# ----------------------------------------------------------------------------------------- reports
class _Line(NamedTuple):
    file: str
    reason: str
    group: Tuple[Optional[str], str]  # (kind, what makes two lines "the same problem")
    fix: Optional[str]

    def text(self) -> str:
        return f"{self.file}: {self.reason}" if self.file else self.reason


def _shape(reason: str) -> str:
    """A reason with its numbers and quoted values masked: what stays is the problem itself
    ("line 7: non-numeric value 'x'" and "line 9: non-numeric value 'y'" are the same problem)."""
    return re.sub(r"\d+", "#", re.sub(r"'[^']*'", "'*'", reason))


def _summarise(lines: Sequence[_Line]) -> List[str]:
    """Every line, except that a group of more than ``SUMMARY_AFTER`` lines becomes one, at its first
    occurrence: that line, then the count, the first files and the likely fix."""
    groups: Dict[Tuple[Optional[str], str], List[_Line]] = {}
    for ln in lines:
        groups.setdefault(ln.group, []).append(ln)
    out = []
    for ln in lines:
        members = groups[ln.group]
        if len(members) <= SUMMARY_AFTER:
            out.append(ln.text())
        elif members[0] is ln:
            files = list(dict.fromkeys(m.file for m in members))
            shown = ", ".join(Path(f).name or f for f in files[:SUMMARY_AFTER])
            more = ", ..." if len(files) > SUMMARY_AFTER else ""
            where = f"{len(files)} files" if len(files) > 1 else "1 file"
            fix = f"; likely fix: {ln.fix}" if ln.fix else ""
            out.append(f"{ln.text()} [{len(members)} times in {where}: {shown}{more}{fix}]")
    return out


class SplitReport:
    """What reading one split found. ``problems``/``notes``: ``"<file>: <reason>"`` lines, a problem
    repeated more than ``SUMMARY_AFTER`` times as one summary line (``all_problems``: every line);
    ``counts``: problems per kind (exact); ``stats``: informational counts (negatives, difficult,
    truncated, crowd, polygon boxes ...)."""

    def __init__(self, split: str, strict: bool = False):
        self.split = split
        self.strict = strict
        self.counts: Counter = Counter()
        self.stats: Counter = Counter()
        self._problems: List[_Line] = []
        self._notes: List[_Line] = []

    def problem(self, file: Union[str, Path], reason: str, kind: str, same: Optional[str] = None,
                fix: Optional[str] = None) -> None:
        """Report a problem. Lines of one kind and the same ``same`` are summarised together when there
        are many; ``same`` defaults to the reason with its numbers and quoted values masked, and is
        given where a reason holds other per-file details (a path). ``fix``: the likely fix, when the
        reader knows it better than ``LIKELY_FIX[kind]``."""
        key = (kind, _shape(reason) if same is None else same)
        line = _Line(str(file), reason, key, fix or LIKELY_FIX.get(kind))
        if self.strict:
            raise DatasetError(line.text())
        self._problems.append(line)
        self.counts[kind] += 1

    def note(self, file: Union[str, Path, None], reason: str, kind: Optional[str] = None,
             same: Optional[str] = None) -> None:
        """An informational line (``file`` None: ``reason`` is the whole line); ``kind`` is counted in
        ``stats``; ``same`` as for ``problem``."""
        self._notes.append(_Line("" if file is None else str(file), reason,
                                 (kind, _shape(reason) if same is None else same), None))
        if kind:
            self.stats[kind] += 1

    @property
    def problems(self) -> List[str]:
        return _summarise(self._problems)

    @property
    def all_problems(self) -> List[str]:
        return [ln.text() for ln in self._problems]

    @property
    def notes(self) -> List[str]:
        return _summarise(self._notes)

    @property
    def n_problems(self) -> int:
        return len(self._problems)

    def summary(self) -> str:
        """'3 problem(s): 2 zero-size box, 1 ...' or 'no problems'."""
        if not self._problems:
            return "no problems"
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts.most_common())
        return f"{len(self._problems)} problem(s): {kinds}"


# ------------------------------------------------------------------------- reader-neutral records
@dataclass
class RawObject:
    """One annotated object before class mapping and box checks. ``key`` is what the file calls the
    class (VOC name, YOLO class id, COCO category id); ``where`` locates it in messages."""

    key: Hashable
    box: Tuple[float, float, float, float]  # xyxy, original pixels, unchecked
    where: str
    difficult: bool = False
    iscrowd: bool = False


@dataclass
class RawImage:
    image_id: ImageId
    path: Path
    width: int
    height: int
    source: Path  # the annotation file (for messages)
    objects: List[RawObject] = field(default_factory=list)


def check_boxes(boxes: np.ndarray, width: int, height: int, report: SplitReport, file: Union[str, Path],
                where: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Validate (N, 4) xyxy pixel boxes against a ``width`` x ``height`` image.
    Returns (keep mask, boxes clipped to the image). Skipped: non-finite, inverted, zero-size, fully
    outside; clipped: partly outside (beyond ``CLIP_TOLERANCE``). Every case is reported."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    clipped = boxes.copy()

    def bad(i, reason, kind):  # the box coordinates differ, the problem is the same: grouped by kind
        report.problem(file, f"{desc}: {reason}", kind, same=kind)
        keep[i] = False

    for i, (x1, y1, x2, y2) in enumerate(boxes):
        desc = f"{where[i]} box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if not np.all(np.isfinite((x1, y1, x2, y2))):
            bad(i, "non-finite coordinate; skipped", "non-finite coordinate")
        elif x2 < x1 or y2 < y1:
            bad(i, "inverted (x2 < x1 or y2 < y1); skipped", "inverted box")
        elif x2 == x1 or y2 == y1:
            bad(i, "zero size; skipped", "zero-size box")
        elif x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
            bad(i, f"entirely outside the {width}x{height} image; skipped", "box outside the image")
        else:
            c = np.array([min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                          min(max(x2, 0.0), width), min(max(y2, 0.0), height)])
            if np.abs(c - boxes[i]).max() > CLIP_TOLERANCE:
                report.problem(file, f"{desc}: extends outside the {width}x{height} image; clipped",
                               "box clipped to the image", same="clipped")
            clipped[i] = c
    return keep, clipped


def build_records(raw_images: Sequence[RawImage], key_to_label: Dict[Hashable, int], report: SplitReport,
                  describe_unknown: Callable[[Hashable], str]) -> List[ImageRecord]:
    """Map class keys to labels and check boxes; every image survives (an image whose boxes were all
    skipped becomes a negative)."""
    records = []
    for im in raw_images:
        objs = []
        for o in im.objects:
            label = key_to_label.get(o.key)
            if label is None:
                unknown = describe_unknown(o.key)  # one summary per unknown class, not per object
                report.problem(im.source, f"{o.where}: {unknown}; skipped", "unknown class", same=unknown)
                continue
            objs.append((o, label))
        if objs:
            keep, boxes = check_boxes(np.array([o.box for o, _ in objs]), im.width, im.height, report,
                                      im.source, [o.where for o, _ in objs])
            objs = [ol for ol, k in zip(objs, keep) if k]
            boxes = boxes[keep].astype(np.float32)
        else:
            boxes = np.zeros((0, 4), np.float32)
        rec = ImageRecord(
            image_id=im.image_id, path=im.path, width=int(im.width), height=int(im.height),
            boxes=boxes.reshape(-1, 4),
            labels=np.array([lab for _, lab in objs], dtype=np.int64),
            difficult=np.array([o.difficult for o, _ in objs], dtype=bool),
            iscrowd=np.array([o.iscrowd for o, _ in objs], dtype=bool))
        report.stats["images"] += 1
        report.stats["boxes"] += len(objs)
        report.stats["difficult boxes"] += int(rec.difficult.sum())
        report.stats["crowd boxes"] += int(rec.iscrowd.sum())
        if not objs:
            report.stats["images without boxes"] += 1
        records.append(rec)
    return records


def read_image_size(path: Path, report: SplitReport, source: Union[str, Path], max_pixels: int,
                    annotated: Optional[Tuple[int, int]] = None) -> Optional[Tuple[int, int]]:
    """Upright (EXIF-applied) size of ``path`` from its header, or None after reporting why it is
    unusable. ``annotated``: the (width, height) the annotation claims, compared and noted."""
    try:
        w, h, orientation = image_size(path, max_pixels)
    except ImageError as e:
        report.problem(path, f"{e}; image skipped", "unusable image")
        return None
    if orientation != 1:
        report.note(path, f"EXIF orientation {orientation}: decoded upright as {w}x{h}",
                    "EXIF-rotated images", same=f"orientation {orientation}")
    if annotated is not None and all(annotated) and tuple(annotated) != (w, h):
        swapped = tuple(annotated) == (h, w)
        hint = " (the un-rotated size: EXIF orientation swaps width and height)" if swapped else ""
        report.note(source, f"annotation says {annotated[0]}x{annotated[1]} but the image is {w}x{h}{hint}; "
                    "using the image's size", "size mismatch", same=f"swapped={swapped}")
    return w, h
