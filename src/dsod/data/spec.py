"""``load_dataset(data)``: one entry point for VOC, COCO and YOLO datasets, with honest problem reports.

``data`` is one of
- a dataset YAML (Ultralytics style, plus ``format:`` and, for COCO, ``images:``)::

      path: ../VOCdevkit          # root; relative to this YAML's folder (default: that folder)
      format: voc                 # voc | coco | yolo; detected when absent
      train: [VOC2007/ImageSets/Main/trainval.txt, VOC2012/ImageSets/Main/trainval.txt]
      val: VOC2007/ImageSets/Main/test.txt
      names: [aeroplane, bicycle, ...]   # or {0: aeroplane, 1: bicycle}; optional for voc and coco

  Split entries are a path or a list of paths, relative to ``path``: VOC ``ImageSets/Main/*.txt`` id
  lists (ids resolve to ``<list>/../../Annotations/<id>.xml`` and ``../../JPEGImages/<id>.*``) or
  folders of XML files; COCO annotation JSONs (images beside the JSON unless ``images:`` says where);
  YOLO image folders or list files (labels in the sibling ``labels/`` folder, Ultralytics rule).
  Paths that do not exist (foreign absolute paths written by another machine, as in Roboflow's
  ``data.yaml``) fall back to the longest tail of the path that exists under the dataset root or the
  YAML's folder (or their parents); the substitution is reported as a note.
- a VOC root (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{train,val,trainval,test}.txt``), or a
  plain folder of VOC XML files with their images beside them (one split, ``train``);
- a COCO JSON (one split, named after the file or its folder: ``val``/``valid`` -> ``val``, ``test``
  -> ``test``, otherwise ``train``);
- a folder holding ``data.yaml``.

Problems: everything odd in the data is reported as one line ``"<file>: <reason>"``. Problems (the data
was skipped or changed: corrupt image, zero-size box, box clipped to the image, unknown class ...) are
counted per kind in the split's ``SplitReport`` and appended to ``DatasetInfo.problems``; the broken
sample or box is skipped and reading goes on. With ``strict=True`` the first problem raises
``DatasetError`` with that line instead. Notes (a path fallback, classes collected from the data, an
image without a label file = a negative) are informational and never raise.

Box conventions (all readers, see ``check_boxes``): boxes are ``xyxy`` float32 in original-image
pixels. VOC coordinates are kept exactly as written in the XML: the devkit's 1-based pixel indices
are *not* shifted by 1, as in SSD/DSOD's Caffe data preparation (spec §1.8 data layer reads the XML
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
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .images import MAX_PIXELS, ImageError, image_size
from .records import DatasetInfo, ImageId, ImageRecord

FORMATS = ("voc", "coco", "yolo")
STANDARD_SPLITS = ("train", "val", "test")
VOC_SPLIT_FILES = ("train", "val", "trainval", "test")
# Sub-pixel overshoot (e.g. COCO's x + w = 640.0000001) is clipped silently; more is counted.
CLIP_TOLERANCE = 1e-3


class DatasetError(ValueError):
    """A dataset that cannot be read (or, with ``strict=True``, any problem); the message is one line
    naming the file and the problem."""


# ----------------------------------------------------------------------------------------- reports
class SplitReport:
    """What reading one split found. ``problems``/``notes``: ``"<file>: <reason>"`` lines;
    ``counts``: problems per kind; ``stats``: informational counts (negatives, difficult, truncated,
    crowd, polygon boxes ...)."""

    def __init__(self, split: str, strict: bool = False):
        self.split = split
        self.strict = strict
        self.problems: List[str] = []
        self.notes: List[str] = []
        self.counts: Counter = Counter()
        self.stats: Counter = Counter()

    def problem(self, file: Union[str, Path], reason: str, kind: str) -> None:
        line = f"{file}: {reason}"
        if self.strict:
            raise DatasetError(line)
        self.problems.append(line)
        self.counts[kind] += 1

    def note(self, file: Union[str, Path], reason: str, kind: Optional[str] = None) -> None:
        self.notes.append(f"{file}: {reason}")
        if kind:
            self.stats[kind] += 1

    def summary(self) -> str:
        """'3 problems (2 zero-size box skipped, 1 ...)' or 'no problems'."""
        if not self.problems:
            return "no problems"
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts.most_common())
        return f"{len(self.problems)} problem(s): {kinds}"


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
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        desc = f"{where[i]} box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if not np.all(np.isfinite((x1, y1, x2, y2))):
            report.problem(file, f"{desc}: non-finite coordinate; skipped", "non-finite coordinate")
            keep[i] = False
        elif x2 < x1 or y2 < y1:
            report.problem(file, f"{desc}: inverted (x2 < x1 or y2 < y1); skipped", "inverted box")
            keep[i] = False
        elif x2 == x1 or y2 == y1:
            report.problem(file, f"{desc}: zero size; skipped", "zero-size box")
            keep[i] = False
        elif x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
            report.problem(file, f"{desc}: entirely outside the {width}x{height} image; skipped",
                           "box outside the image")
            keep[i] = False
        else:
            c = np.array([min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                          min(max(x2, 0.0), width), min(max(y2, 0.0), height)])
            if np.abs(c - boxes[i]).max() > CLIP_TOLERANCE:
                report.problem(file, f"{desc}: extends outside the {width}x{height} image; clipped",
                               "box clipped to the image")
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
                report.problem(im.source, f"{o.where}: {describe_unknown(o.key)}; skipped", "unknown class")
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
                    "EXIF-rotated images")
    if annotated is not None and all(annotated) and tuple(annotated) != (w, h):
        hint = " (the un-rotated size: EXIF orientation swaps width and height)" \
            if tuple(annotated) == (h, w) else ""
        report.note(source, f"annotation says {annotated[0]}x{annotated[1]} but the image is {w}x{h}{hint}; "
                    "using the image's size", "size mismatch")
    return w, h


# --------------------------------------------------------------------------------- path handling
def _resolve_entry(entry: str, root: Path, yaml_dir: Path) -> Tuple[Optional[Path], Path]:
    """(existing path or None, the path as configured). Falls back to the longest tail of ``entry``
    that exists under root / the YAML folder / their parents (foreign absolute paths, Roboflow's
    ``../train/images``, LightlyTrain's ``images -> ../images`` symlink that was not unpacked)."""
    p = Path(str(entry)).expanduser()
    configured = p if p.is_absolute() else root / p
    if configured.exists():
        return configured, configured
    parts = [x for x in p.parts if x not in (p.anchor, "..", ".", "~") and x]
    bases: List[Path] = []
    for b in (root, yaml_dir, root.parent, yaml_dir.parent):
        if b not in bases:
            bases.append(b)
    shortest = min(2, len(parts))  # never guess from a bare last component like "images"
    for k in range(len(parts), max(shortest, 1) - 1, -1):  # longest tail first
        tail = Path(*parts[-k:])
        for b in bases:
            if (b / tail).exists():
                return b / tail, configured
    return None, configured


def _split_token(path: Path) -> str:
    """Split name for a lone COCO JSON: from its name (instances_val2017.json) or its folder."""
    for text in (path.stem.lower(), path.parent.name.lower()):
        for tok in re.split(r"[^a-z]+", text):
            if tok in ("val", "valid", "validation"):
                return "val"
            if tok == "test":
                return "test"
            if tok == "train":
                return "train"
    return "train"


def _parse_names(raw, where: str) -> Optional[List[str]]:
    if raw is None:
        return None
    if isinstance(raw, dict):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: names keys must be integers 0..n-1") from None
        if keys != list(range(len(keys))):
            raise DatasetError(f"{where}: names keys must be 0..{len(keys) - 1} without gaps, got {keys}")
        by_int = {int(k): v for k, v in raw.items()}
        return [str(by_int[k]).strip() for k in keys]
    if isinstance(raw, (list, tuple)):
        return [str(v).strip() for v in raw]
    raise DatasetError(f"{where}: names must be a list or a {{index: name}} mapping")


def _as_list(v) -> List[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [str(v)]


# ------------------------------------------------------------------------------------ the spec
class DatasetSpec:
    """A resolved dataset description. ``info`` (names, format, category ids, root, problems),
    ``splits`` (the split names it defines) and ``records(split)`` (cached ``ImageRecord`` lists;
    problems go to ``report(split)`` and ``info.problems``)."""

    def __init__(self, data: str, fmt: str, root: Path, yaml_dir: Path, entries: Dict[str, List[str]],
                 names: Optional[List[str]], strict: bool = False, max_pixels: int = MAX_PIXELS,
                 images: Optional[str] = None, notes: Sequence[str] = ()):
        if fmt not in FORMATS:
            raise DatasetError(f"data={data}: unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
        if not entries:
            raise DatasetError(f"data={data}: no splits defined (expected train/val/test keys)")
        self.data, self.format, self.root, self.yaml_dir = data, fmt, root, yaml_dir
        self.strict, self.max_pixels = strict, max_pixels
        self.images = images
        self._entries = entries
        self._resolved: Dict[str, List[Tuple[str, Optional[Path], Path]]] = {}
        self._reports: Dict[str, SplitReport] = {}
        self._raw: Dict[str, List[RawImage]] = {}
        self._records: Dict[str, List[ImageRecord]] = {}
        self._coco_json: Dict[str, dict] = {}
        self.notes: List[str] = list(notes)
        for split, items in entries.items():
            rep = self._report(split)
            res = []
            for entry in items:
                found, configured = _resolve_entry(entry, root, yaml_dir)
                if found is not None and found != configured:
                    rep.note(f"data={data}", f"{split}: '{entry}' not found at {configured}; using {found}",
                             "path fallbacks")
                res.append((entry, found, configured))
            self._resolved[split] = res
        self.info = DatasetInfo(names=list(names) if names else [], format=fmt, root=root)
        self._init_names(names)

    # -- public ---------------------------------------------------------------------------------
    @property
    def splits(self) -> List[str]:
        return list(self._entries)

    def report(self, split: str) -> SplitReport:
        self._check_split(split)
        return self._report(split)

    def records(self, split: str) -> List[ImageRecord]:
        """The split's images as ``ImageRecord``s (cached). Raises ``DatasetError`` when the split's
        files cannot be found or read at all (or, when strict, on the first problem)."""
        self._check_split(split)
        if split not in self._records:
            rep = self._report(split)
            n_before = len(rep.problems)
            if self.format == "coco":
                recs = self._coco_records(split)
            else:
                raw = self._raw_split(split)
                recs = self._map_records(split, raw)
            self._records[split] = recs
            self.info.problems.extend(rep.problems[n_before:])
        return self._records[split]

    # -- internals -------------------------------------------------------------------------------
    def _report(self, split: str) -> SplitReport:
        if split not in self._reports:
            self._reports[split] = SplitReport(split, self.strict)
        return self._reports[split]

    def _check_split(self, split: str) -> None:
        if split not in self._entries:
            raise DatasetError(f"data={self.data}: no split '{split}'; this dataset has "
                               f"{', '.join(self._entries) or 'none'}")

    def _sources(self, split: str) -> List[Tuple[Path, Path]]:
        out = []
        for entry, found, configured in self._resolved[split]:
            if found is None:
                raise DatasetError(f"data={self.data}: {split}: '{entry}' not found (looked at {configured})")
            out.append((found, configured))
        return out

    def _raw_split(self, split: str) -> List[RawImage]:
        if split not in self._raw:
            rep = self._report(split)
            if self.format == "voc":
                from .voc import read_voc
                self._raw[split] = read_voc([s for s, _ in self._sources(split)], rep, self.max_pixels)
            else:
                from .yolo import read_yolo
                self._raw[split] = read_yolo(self._sources(split), self.root, rep, self.max_pixels)
        return self._raw[split]

    def _init_names(self, names: Optional[List[str]]) -> None:
        if self.format == "coco":
            from .coco import resolve_categories
            first = next(iter(self._entries))
            js, path = self._coco_load(first)
            self.info.names, self.info.category_ids, notes = resolve_categories(js, path, names)
            for n in notes:
                self._report(first).note(path, n, "category notes")
            return
        if names:
            return
        # No names: collect them from the data (all splits, so every split maps the same way).
        keys = set()
        problems_before = {s: len(self._report(s).problems) for s in self._entries}
        for split in self._entries:
            try:
                raw = self._raw_split(split)
            except DatasetError as e:
                if self.strict:
                    raise
                self._report(split).notes.append(str(e))
                continue
            keys.update(o.key for im in raw for o in im.objects)
        for split, n in problems_before.items():
            self.info.problems.extend(self._report(split).problems[n:])
        if self.format == "voc":
            self.info.names = sorted(str(k) for k in keys)
            msg = f"no names given; {len(keys)} classes collected from the XML files (sorted): " \
                  f"{', '.join(self.info.names)}"
        else:
            n = max(keys) + 1 if keys else 0
            self.info.names = [str(i) for i in range(n)]
            msg = f"no names given; {n} classes inferred from the largest class id, named '0'..'{n - 1}'"
        self.notes.append(f"data={self.data}: {msg}")

    def _map_records(self, split: str, raw: List[RawImage]) -> List[ImageRecord]:
        rep = self._report(split)
        names = self.info.names
        if self.format == "voc":
            mapping = {n: i for i, n in enumerate(names)}
            return build_records(raw, mapping, rep, lambda k: f"unknown class '{k}' (not in names)")
        mapping = {i: i for i in range(len(names))}
        n = len(names)
        return build_records(raw, mapping, rep,
                             lambda k: f"unknown class id {k} (names has {n} classes: 0..{n - 1})")

    def _coco_load(self, split: str) -> Tuple[dict, Path]:
        sources = self._sources(split)
        if len(sources) != 1 or sources[0][0].suffix.lower() != ".json":
            raise DatasetError(f"data={self.data}: {split}: a COCO split must be one annotation .json file")
        path = sources[0][0]
        if split not in self._coco_json:
            from .coco import load_coco_json
            self._coco_json[split] = load_coco_json(path)
        return self._coco_json[split], path

    def _coco_records(self, split: str) -> List[ImageRecord]:
        from .coco import find_image_dir, read_coco
        js, path = self._coco_load(split)
        rep = self._report(split)
        image_dir = None
        if self.images:
            found, configured = _resolve_entry(self.images, self.root, self.yaml_dir)
            if found is None:
                raise DatasetError(f"data={self.data}: images: '{self.images}' not found "
                                   f"(looked at {configured})")
            image_dir = found
        else:
            image_dir = find_image_dir(js, path, rep)
        recs = read_coco(js, path, image_dir, self.info.names, self.info.category_ids, rep, self.max_pixels)
        self._coco_json.pop(split, None)  # the parsed JSON can be large; records are what we keep
        return recs


# ------------------------------------------------------------------------------- load_dataset
def load_dataset(data: Union[str, Path], strict: bool = False, max_pixels: int = MAX_PIXELS) -> DatasetSpec:
    """Resolve ``data`` (dataset YAML, VOC root or XML folder, COCO JSON, folder with data.yaml) into
    a ``DatasetSpec``. Raises ``DatasetError`` (one line: ``data=...: <problem>``) when it cannot."""
    label = f"data={data}"
    p = Path(str(data)).expanduser()
    if not p.exists():
        raise DatasetError(f"{label}: file not found")
    kw = dict(strict=strict, max_pixels=max_pixels)
    if p.is_dir():
        if (p / "Annotations").is_dir():
            sets = p / "ImageSets" / "Main"
            entries = {s: [str(sets / f"{s}.txt")] for s in VOC_SPLIT_FILES if (sets / f"{s}.txt").is_file()}
            notes = []
            if not entries:
                entries = {"train": [str(p)]}
                notes.append(f"{label}: no ImageSets/Main/{{train,val,trainval,test}}.txt; every XML in "
                             "Annotations/ is the 'train' split")
            return DatasetSpec(str(data), "voc", p, p, entries, None, notes=notes, **kw)
        for name in ("data.yaml", "dataset.yaml", "data.yml"):
            if (p / name).is_file():
                return _from_yaml(p / name, str(data), **kw)
        if any(x.suffix.lower() == ".xml" for x in p.iterdir()):
            return DatasetSpec(str(data), "voc", p, p, {"train": [str(p)]}, None,
                               notes=[f"{label}: a folder of VOC XML files: one split, 'train'"], **kw)
        raise DatasetError(f"{label}: cannot tell the dataset format (no Annotations/ folder, no *.xml, "
                           "no data.yaml); pass a dataset YAML")
    suffix = p.suffix.lower()
    if suffix == ".json":
        split = _split_token(p)
        return DatasetSpec(str(data), "coco", p.parent, p.parent, {split: [str(p)]}, None, **kw)
    if suffix in (".yaml", ".yml"):
        return _from_yaml(p, str(data), **kw)
    raise DatasetError(f"{label}: expected a dataset .yaml, a COCO .json or a dataset folder, "
                       f"got a '{suffix}' file")


def _from_yaml(path: Path, data: str, strict: bool, max_pixels: int) -> DatasetSpec:
    import yaml

    label = f"data={data}"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DatasetError(f"{label}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label}: cannot read the file ({e})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{label}: expected a mapping with train/val/names keys, got {type(cfg).__name__}")
    yaml_dir = path.parent
    notes = []
    root = yaml_dir
    if cfg.get("path"):
        found, configured = _resolve_entry(str(cfg["path"]), yaml_dir, yaml_dir)
        if found is None:
            notes.append(f"{label}: path '{cfg['path']}' not found; split paths are taken relative to "
                         f"{yaml_dir}")
        else:
            root = found
            if found != configured:
                notes.append(f"{label}: path '{cfg['path']}' not found; using {found}")
    names = _parse_names(cfg.get("names"), label)
    nc = cfg.get("nc")
    if names and nc is not None and int(nc) != len(names):
        raise DatasetError(f"{label}: nc={nc} but names has {len(names)} entries")
    if names is None and nc is not None:
        names = [str(i) for i in range(int(nc))]
        notes.append(f"{label}: no names; nc={nc} classes named '0'..'{int(nc) - 1}'")
    entries = {s: _as_list(cfg.get(s)) for s in STANDARD_SPLITS if _as_list(cfg.get(s))}
    fmt = cfg.get("format")
    if fmt is not None:
        fmt = str(fmt).lower()
        if fmt not in FORMATS:
            raise DatasetError(f"{label}: format '{fmt}' unknown; valid: {', '.join(FORMATS)}")
    else:
        fmt = _detect_format(entries, root, yaml_dir)
    return DatasetSpec(data, fmt, root, yaml_dir, entries, names, strict=strict, max_pixels=max_pixels,
                       images=cfg.get("images"), notes=notes)


def _detect_format(entries: Dict[str, List[str]], root: Path, yaml_dir: Path) -> str:
    for items in entries.values():
        for entry in items:
            if entry.lower().endswith(".json"):
                return "coco"
            found, _ = _resolve_entry(entry, root, yaml_dir)
            if found is None:
                continue
            if found.is_file() and found.suffix.lower() == ".txt":
                if (found.parent.parent.parent / "Annotations").is_dir():
                    return "voc"
                return "yolo"
            if found.is_dir():
                has_xml = any(x.suffix.lower() == ".xml" for x in found.iterdir())
                if (found / "Annotations").is_dir() or has_xml:
                    return "voc"
                return "yolo"
    return "yolo"  # Ultralytics data.yaml is the YAML most users have
