"""COCO detection JSON reader.

- **Categories -> labels.** COCO category ids are not contiguous (1..90 with gaps); label ``i`` is the
  i-th category in id order and ``DatasetInfo.category_ids[i]`` maps it back (for evaluation and
  checkpoints). All categories of the JSON are kept, also those without annotations (they are
  reported), *except* a Roboflow-style placeholder: a category with no annotations whose name is the
  ``supercategory`` of the other categories (sharks-tiny-coco's id 0 "sharks" above fish/primary/shark).
  It names the dataset, not a class; keeping it would add a class no box can ever have, and the
  same export in YOLO format has exactly the other three classes. Its removal is reported. With
  ``names`` in the dataset YAML, categories are matched to those names instead.
- **iscrowd** regions are kept and flagged (``ImageRecord.iscrowd``): the training dataset drops
  them, COCO evaluation needs them to ignore detections on crowds.
- **Images without annotations** are kept as negatives. Ids may be 64-bit (Python ints).
- Annotations pointing at unknown images or categories, malformed ``bbox``es, negative/zero sizes
  are reported and skipped; boxes are checked like every reader's (``records.check_boxes``).
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from numbers import Real
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .images import MAX_PIXELS
from .records import (
    DatasetError,
    ImageRecord,
    RawImage,
    RawObject,
    SplitReport,
    build_records,
    read_image_size,
)


def load_coco_json(path: Path) -> dict:
    """Parse and shape-check a COCO JSON; ``DatasetError`` (one line) when it is not usable at all."""
    try:
        with open(path, "rb") as f:
            js = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 JSON ({e.reason})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(js, dict):
        raise DatasetError(f"{path}: not a COCO annotation file (top level is a {type(js).__name__}, "
                           "not an object)")
    if not isinstance(js.get("images"), list):
        raise DatasetError(f"{path}: not a COCO annotation file (no 'images' list)")
    for key in ("annotations", "categories"):
        if key in js and not isinstance(js[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list")
    return js


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def resolve_categories(js: dict, path: Path, names: Optional[List[str]]
                       ) -> Tuple[List[str], List[int], List[str]]:
    """(names, category_ids, notes) for the dataset; see the module docstring for the rules."""
    cats = [c for c in js.get("categories", []) if isinstance(c, dict) and _is_int(c.get("id"))]
    if len(cats) != len(js.get("categories", [])):
        raise DatasetError(f"{path}: every category needs an integer 'id'")
    ids = [c["id"] for c in cats]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        raise DatasetError(f"{path}: duplicate category id(s) {dup}")
    cats.sort(key=lambda c: c["id"])
    used = Counter(a.get("category_id") for a in js.get("annotations", []) if isinstance(a, dict))
    notes: List[str] = []
    if names:
        by_name = {str(c.get("name", "")).strip(): c["id"] for c in cats}
        category_ids = []
        for i, n in enumerate(names):
            if n not in by_name:
                raise DatasetError(f"{path}: names[{i}] '{n}' is not a category of this JSON "
                                   f"(it has {', '.join(by_name) or 'none'})")
            category_ids.append(by_name[n])
        extra = [f"{c['id']} '{c.get('name')}'" for c in cats if c["id"] not in category_ids]
        if extra:
            notes.append(f"categories not in names (their annotations are skipped): {', '.join(extra)}")
        return list(names), category_ids, notes
    supercats = {str(c.get("supercategory", "")).strip() for c in cats}
    out_names, out_ids, unused = [], [], []
    for c in cats:
        name = str(c.get("name", "")).strip() or str(c["id"])
        if used[c["id"]] == 0 and name in supercats and any(
                str(o.get("supercategory", "")).strip() == name and o is not c for o in cats):
            notes.append(f"category id {c['id']} '{name}' has no annotations and is the supercategory of the "
                         "others (a Roboflow-style placeholder): not used as a class")
            continue
        if used[c["id"]] == 0:
            unused.append(f"{c['id']} '{name}'")
        out_names.append(name)
        out_ids.append(c["id"])
    if unused:
        what = "category has" if len(unused) == 1 else "categories have"
        notes.append(f"{len(unused)} {what} no annotations in this file (kept as classes): "
                     f"{', '.join(unused)}")
    return out_names, out_ids, notes


def find_image_dir(js: dict, path: Path, report: SplitReport) -> Path:
    """Where the JSON's ``file_name``s live when the YAML gives no ``images:``: beside the JSON, or
    the usual COCO layouts (``images/``, ``<split>/``, ``../images/<split>/`` for
    ``annotations/instances_<split>.json``). Chosen by the first few images that exist."""
    m = re.match(r"instances_(.+)$", path.stem)
    split = m.group(1) if m else path.stem
    d = path.parent
    candidates = [d, d / "images", d / split, d / "images" / split, d.parent / "images" / split,
                  d.parent / split, d.parent / "images"]
    names = [im.get("file_name") for im in js.get("images", [])[:5] if isinstance(im, dict)]
    names = [n for n in names if isinstance(n, str) and n]
    if not names:
        return d
    for c in candidates:
        if any((c / n).is_file() or (c / Path(n).name).is_file() for n in names):
            if c != d:
                report.note(path, f"images found in {c}", "path fallbacks")
            return c
    report.note(path, f"none of the first images found in {', '.join(str(c) for c in candidates)}; "
                "set images: in a dataset YAML")
    return d


def read_coco(js: dict, path: Path, image_dir: Path, names: List[str], category_ids: List[int],
              report: SplitReport, max_pixels: int = MAX_PIXELS) -> List[ImageRecord]:
    by_id: Dict[object, dict] = {}
    order = []
    for k, im in enumerate(js["images"]):
        if not isinstance(im, dict) or im.get("id") is None or not isinstance(im.get("file_name"), str):
            report.problem(path, f"images[{k}]: needs 'id' and 'file_name'; skipped", "malformed annotation")
            continue
        if im["id"] in by_id:
            report.problem(path, f"images[{k}]: duplicate image id {im['id']}; skipped", "duplicate id")
            continue
        by_id[im["id"]] = im
        order.append(im["id"])
    # category sanity across split files: same id, same name
    json_names = {c.get("id"): str(c.get("name", "")).strip() for c in js.get("categories", [])
                  if isinstance(c, dict)}
    for label, cid in enumerate(category_ids):
        if cid in json_names and json_names[cid] != names[label]:
            report.note(path, f"category id {cid} is '{json_names[cid]}' here but '{names[label]}' in the "
                        "dataset's names (matched by id)")
    objects: Dict[object, List[RawObject]] = defaultdict(list)
    for k, a in enumerate(js.get("annotations", [])):
        if not isinstance(a, dict):
            report.problem(path, f"annotations[{k}]: not an object; skipped", "malformed annotation")
            continue
        where = f"annotation id {a.get('id', f'#{k}')}"
        if a.get("image_id") not in by_id:
            report.problem(path, f"{where}: image_id {a.get('image_id')} is not in 'images'; skipped",
                           "annotation for unknown image")
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)):
            report.problem(path, f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}; skipped",
                           "missing coordinates" if bbox is None else "non-numeric coordinate")
            continue
        x, y, w, h = (float(v) for v in bbox)
        # negative w/h become inverted xyxy boxes and zero w/h zero-size boxes: check_boxes reports them
        objects[a["image_id"]].append(RawObject(a.get("category_id"), (x, y, x + w, y + h), where,
                                                iscrowd=bool(a.get("iscrowd", 0))))
    raw: List[RawImage] = []
    missing_dir_reported = False
    for image_id in order:
        im = by_id[image_id]
        file = image_dir / im["file_name"]
        if not file.is_file() and (image_dir / Path(im["file_name"]).name).is_file():
            file = image_dir / Path(im["file_name"]).name
        if not file.is_file():
            if not image_dir.is_dir() and not missing_dir_reported:
                missing_dir_reported = True
                report.note(path, f"image folder {image_dir} does not exist")
            report.problem(file, f"image file not found (listed in {path.name} as id {image_id}); skipped",
                           "missing image")
            continue
        annotated = (im.get("width"), im.get("height"))
        annotated = annotated if all(_is_int(v) for v in annotated) else None
        wh = read_image_size(file, report, path, max_pixels, annotated=annotated)
        if wh is None:
            continue
        raw.append(RawImage(image_id, file, wh[0], wh[1], path, objects.get(image_id, [])))
    mapping = {cid: label for label, cid in enumerate(category_ids)}
    return build_records(raw, mapping, report, lambda k: f"unknown category_id {k!r}")
