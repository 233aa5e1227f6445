"""YOLO (Ultralytics) txt reader.

Sources are image folders (searched recursively) or split lists (``lists``: ``.txt`` of image paths,
Ultralytics-style, or ``.txt``/``.csv`` of image names or stems, found in ``images/`` beside the list
or in the dataset root). The label of
``.../images/<sub>/x.jpg`` is ``.../labels/<sub>/x.txt`` (Ultralytics: the last ``images`` path
component becomes ``labels``); when the configured folder did not exist and a fallback was used, the
label folder next to the *configured* path is tried too (coco128's ``object_detection/labels`` beside
an ``images -> ../images`` symlink that was not unpacked), then a ``.txt`` beside the image.

Lines: ``class cx cy w h`` normalised to [0, 1]; a line with more values is a polygon
``class x1 y1 x2 y2 ...`` (segmentation export) and becomes its bounding box. An image without a label
file is a negative (Ultralytics convention, noted); a label file without an image is reported.
Values far outside [0, 1] (pixel coordinates by mistake) make the line unusable, small overshoots
are clipped like any box.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from .images import MAX_PIXELS, is_image_file
from .lists import entry_stem, read_name_list
from .records import DatasetError, RawImage, RawObject, SplitReport, read_image_size

_LABEL_FILES_IGNORED = {"classes.txt", "notes.txt", "readme.txt"}


def img2label(path: Path) -> Path:
    """Ultralytics' rule: the last ``images`` component of the path becomes ``labels``, suffix .txt."""
    parts = list(path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return path.with_suffix(".txt")


def _label_dir(folder: Path) -> Optional[Path]:
    parts = list(folder.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return None


# A folder search that looks at this many entries without ending is not an image folder (``val: /usr``).
MAX_SCAN_ENTRIES = 200_000


def _walk_images(folder: Path) -> List[Path]:
    """The images under ``folder`` (sorted, ``labels`` folders skipped), following symbolic links but
    each real folder and file once: a link loop or a linked duplicate adds nothing."""
    out, seen_dirs, seen_files, looked = [], set(), set(), 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        looked += len(dirnames) + len(filenames)
        if looked > MAX_SCAN_ENTRIES:
            raise DatasetError(f"{folder}: looked at {MAX_SCAN_ENTRIES:,} entries without reaching the end: is "
                               "this the images folder? (name the folder of the split's images)")
        dirnames[:] = sorted(d for d in dirnames if d != "labels")
        for f in sorted(filenames):
            path = Path(dirpath) / f
            if is_image_file(f) and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                out.append(path)
    return out


def _by_name(folders: Sequence[Path]) -> Dict[str, Path]:
    """lower-case file name and stem -> image, over ``folders`` (for lists of bare names or stems)."""
    index: Dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for f in _walk_images(folder):
                index.setdefault(f.name.lower(), f)
                index.setdefault(f.stem.lower(), f)
    return index


def _images_of(src: Path, root: Path, report: SplitReport) -> List[Path]:
    if src.is_dir():
        return _walk_images(src)
    if is_image_file(src):
        return [src]
    out = []
    index: Optional[Dict[str, Path]] = None
    for n, entry in read_name_list(src, report, whole_line=True):
        p = Path(entry).expanduser()
        if not p.is_absolute():
            # Ultralytics: './x' is relative to the list's folder; try the dataset root as well
            cands = [src.parent / p, root / p]
            p = next((c for c in cands if c.exists()), cands[0])
        if not p.is_file():  # a bare name or stem (a .csv of file names): look in images/
            if index is None:
                index = _by_name(list(dict.fromkeys((src.parent / "images", root / "images"))))
            key = entry.replace("\\", "/").rsplit("/", 1)[-1].lower()
            p = index.get(key) or index.get(entry_stem(entry).lower()) or p
        if not p.is_file():
            report.problem(p, f"image file not found (listed in {src.name} line {n}); skipped",
                           "missing image", same=f"listed in {src.name}",
                           fix="list entries are image paths relative to the list's folder or the dataset "
                               "root, or names of images in images/ there")
            continue
        out.append(p)
    return out


def parse_label_file(path: Path, width: int, height: int, report: SplitReport) -> List[RawObject]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        report.problem(path, "not a text file (cannot decode as UTF-8); labels skipped",
                       "malformed annotation file")
        return []
    except OSError as e:
        report.problem(path, f"cannot read ({e.strerror or e}); labels skipped", "unreadable file")
        return []
    objects = []
    for n, line in enumerate(text.splitlines(), 1):
        toks = line.split()
        if not toks or toks[0].startswith("#"):
            continue
        where = f"line {n}"
        try:
            vals = [float(t) for t in toks]
        except ValueError:
            bad = next(t for t in toks if not _is_float(t))
            report.problem(path, f"{where}: non-numeric value '{bad}'; skipped", "non-numeric coordinate")
            continue
        if not all(math.isfinite(v) for v in vals):  # min()/max() over a polygon would skip a NaN silently
            report.problem(path, f"{where}: non-finite value ('{line.strip()[:60]}'); skipped", "non-finite coordinate")
            continue
        cls = vals[0]
        if cls != int(cls):
            report.problem(path, f"{where}: class id '{toks[0]}' is not an integer; skipped", "unknown class")
            continue
        coords = vals[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            norm = coords
            box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            norm = coords
            box = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
            report.stats["polygon labels converted to boxes"] += 1
        else:
            report.problem(path, f"{where}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 "
                           f"x3 y3 ...', got {len(toks)} values; skipped", "malformed label line")
            continue
        if any(v > 1.5 or v < -0.5 for v in norm):
            report.problem(path, f"{where}: values far outside [0, 1]: YOLO coordinates must be normalised "
                           "by the image size (pixel values?); skipped", "un-normalised coordinates")
            continue
        objects.append(RawObject(int(cls), box, where))
    return objects


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def read_yolo(sources: Sequence[Tuple[Path, Path]], root: Path, report: SplitReport,
              max_pixels: int = MAX_PIXELS) -> List[RawImage]:
    """``sources``: (existing path, configured path) pairs. Returns ``RawImage``s with class ids as keys."""
    out: List[RawImage] = []
    used_labels: Set[Path] = set()
    label_dirs: Dict[Path, Path] = {}  # label folder -> image folder it belongs to
    for found, configured in sources:
        images = _images_of(found, root, report)
        folder_candidates: List[Tuple[Path, Path]] = []  # (image folder, label folder)
        if found.is_dir():
            for img_base in (found, configured):
                ld = _label_dir(img_base)
                if ld is not None and ld.is_dir():
                    folder_candidates.append((img_base, ld))
            if folder_candidates:
                label_dirs.setdefault(folder_candidates[0][1], found)
            elif images and not any(p.with_suffix(".txt").is_file() for p in images[:50]):
                also = f" and {configured}" if configured != found else ""
                report.problem(found, "no labels folder found (looked for the Ultralytics 'labels' sibling "
                               f"of {found}{also}); every image is a negative", "missing labels folder")
        for img in images:
            cands = [img2label(img)]
            if found.is_dir():
                rel = img.relative_to(found)
                cands += [ld / rel.with_suffix(".txt") for _, ld in folder_candidates]
            cands.append(img.with_suffix(".txt"))
            label = next((c for c in cands if c.is_file()), None)
            wh = read_image_size(img, report, label or img, max_pixels)
            if wh is None:
                if label is not None:
                    used_labels.add(label)
                continue
            if label is None:
                report.note(img, "no label file: used as a negative (no objects)",
                            "images without label file")
                objects = []
            else:
                used_labels.add(label)
                objects = parse_label_file(label, wh[0], wh[1], report)
            out.append(RawImage(img.stem, img, wh[0], wh[1], label or img, objects))
    for ld in label_dirs:
        for dirpath, _, filenames in os.walk(ld):
            for f in sorted(filenames):
                p = Path(dirpath) / f
                if f.endswith(".txt") and f.lower() not in _LABEL_FILES_IGNORED and p not in used_labels:
                    report.problem(p, "label file without a matching image; skipped", "label without image")
    return out
