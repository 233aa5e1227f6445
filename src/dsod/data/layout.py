"""Where a dataset's files are: ``data=`` (a dataset YAML, a dataset folder, a COCO JSON) -> a
``Layout`` (format, root, the entries of each split, names, image folder, notes), without reading any
annotation. ``spec.load_dataset`` turns a layout into a ``DatasetSpec``; the readers read the entries.

Paths that do not exist (foreign absolute paths written by another machine, as in Roboflow's
``data.yaml``) fall back to the longest tail of the path that exists under the dataset root or the
YAML's folder (or their parents); the substitution is reported as a note.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .lists import LIST_SUFFIXES, is_list_file
from .records import DatasetError

FORMATS = ("voc", "coco", "yolo")
STANDARD_SPLITS = ("train", "val", "test")
VOC_SPLIT_FILES = ("train", "val", "trainval", "test")


@dataclass
class Layout:
    """What ``data=`` describes. ``entries``: split -> paths as written (relative to ``root`` unless
    absolute); ``images``: the image folder (COCO, VOC), relative to ``root``."""

    fmt: str
    root: Path
    yaml_dir: Path
    entries: Dict[str, List[str]]
    names: Optional[List[str]] = None
    images: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def resolve_entry(entry: str, root: Path, yaml_dir: Path) -> Tuple[Optional[Path], Path]:
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


def split_token(path: Path) -> str:
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



def read_yaml(path: Path, data: str) -> Layout:
    """The layout a dataset YAML describes (see ``spec`` for its keys)."""
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
        found, configured = resolve_entry(str(cfg["path"]), yaml_dir, yaml_dir)
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
        fmt = detect_format(entries, root, yaml_dir)
    return Layout(fmt, root, yaml_dir, entries, names, images=cfg.get("images"), notes=notes)


def detect_format(entries: Dict[str, List[str]], root: Path, yaml_dir: Path) -> str:
    for items in entries.values():
        for entry in items:
            if entry.lower().endswith(".json"):
                return "coco"
            found, _ = resolve_entry(entry, root, yaml_dir)
            if found is None:
                continue
            if found.is_file() and is_list_file(found):
                if len(found.parents) > 2 and (found.parents[2] / "Annotations").is_dir():
                    return "voc"  # ImageSets/Main/x.txt
                beside = [d / a for d in (found.parent, root) for a in ("Annotations", "annotations")]
                return "voc" if any(_has(d, ".xml") for d in beside) else "yolo"
            if found.is_dir():
                return "voc" if (found / "Annotations").is_dir() or _has(found, ".xml") else "yolo"
    return "yolo"  # Ultralytics data.yaml is the YAML most users have


# ---------------------------------------------------------------------------------- dataset folders
# split folder / split list names -> split
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               "trainval": "trainval"}
XML_DIRS = ("annotations", "Annotations", "xml", "xmls", "labels")  # where tools put VOC XML next to images/
NAME_FILES = ("classes.txt", "labels/classes.txt", "obj.names", "classes.names")  # YOLO class lists


def _has(folder: Path, suffix: str) -> bool:
    return folder.is_dir() and any(f.suffix.lower() == suffix for f in folder.iterdir())


def _split_lists(p: Path) -> Dict[str, List[str]]:
    """``train.csv``, ``val.txt`` ... in ``p``: split -> [list file name]."""
    out: Dict[str, List[str]] = {}
    for stem, split in SPLIT_NAMES.items():
        for suffix in LIST_SUFFIXES:
            if split not in out and (p / f"{stem}{suffix}").is_file():
                out[split] = [f"{stem}{suffix}"]
    return out


def _yolo_names(p: Path, label: str, notes: List[str]) -> Optional[List[str]]:
    for rel in NAME_FILES:
        f = p / rel
        if f.is_file():
            text = f.read_text(encoding="utf-8", errors="replace")
            names = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if names:
                notes.append(f"{label}: {len(names)} class names from {rel}")
                return names
    return None


def _entries_note(label: str, what: str, entries: Dict[str, List[str]]) -> str:
    splits = "; ".join(f"{s}: {', '.join(e)}" for s, e in entries.items())
    return f"{label}: {what}; {splits}"


def read_folder(p: Path, data: str) -> Optional[Layout]:
    """The layout of a dataset folder, or None when it holds a dataset YAML (read that instead).
    Entries are relative to the folder, which is the root: ``data=voc`` must not look in ``voc/voc``."""
    label = f"data={data}"
    if (p / "Annotations").is_dir():  # a VOC devkit root
        entries = {s: [f"ImageSets/Main/{s}.txt"] for s in VOC_SPLIT_FILES
                   if (p / "ImageSets" / "Main" / f"{s}.txt").is_file()}
        notes = []
        if not entries:
            entries = _split_lists(p)
            what = "splits from " + ", ".join(e[0] for e in entries.values())
            if not entries:
                entries, what = {"train": ["."]}, "every XML in Annotations/ is the 'train' split"
            notes.append(f"{label}: no ImageSets/Main/{{train,val,trainval,test}}.txt; {what}")
        return Layout("voc", p, p, entries, notes=notes)
    if find_yaml(p) is not None:
        return None
    if _has(p, ".xml"):
        return Layout("voc", p, p, {"train": ["."]},
                      notes=[f"{label}: a folder of VOC XML files: one split, 'train'"])
    layout = _images_beside_annotations(p, label)
    if layout is None:
        layout = _split_folders(p, label)
    if layout is None:
        raise DatasetError(f"{label}: cannot tell the dataset format: expected a VOC root (Annotations/), "
                           "a folder of *.xml, images/ with annotations/ (VOC XML) or labels/ (YOLO txt), "
                           "train/ and val/ folders holding those, or a data.yaml; pass a dataset YAML")
    return layout


def _images_beside_annotations(p: Path, label: str) -> Optional[Layout]:
    """``images/`` + ``annotations/`` (VOC XML) or ``labels/`` (YOLO txt); the splits from ``train.csv``
    / ``val.txt`` ... lists in the folder, else from split subfolders, else one split, 'train'."""
    if not (p / "images").is_dir():
        return None
    lists = _split_lists(p)
    notes: List[str] = []
    xml_dir = next((d for d in XML_DIRS if _has(p / d, ".xml") or any(
        _has(p / d / sub, ".xml") for sub in SPLIT_NAMES)), None)
    if xml_dir is not None:
        fmt, names, what = "voc", None, f"images/ + {xml_dir}/ (VOC XML)"
        subs = {SPLIT_NAMES[s]: [f"{xml_dir}/{s}"] for s in SPLIT_NAMES if _has(p / xml_dir / s, ".xml")}
        entries = lists or subs or {"train": [xml_dir]}
    elif (p / "labels").is_dir():
        fmt, names, what = "yolo", _yolo_names(p, label, notes), "images/ + labels/ (YOLO txt)"
        subs = {SPLIT_NAMES[s]: [f"images/{s}"] for s in SPLIT_NAMES if (p / "images" / s).is_dir()}
        entries = lists or subs or {"train": ["images"]}
    else:
        raise DatasetError(f"{label}: images/ but no annotations/ (VOC XML) or labels/ (YOLO txt) beside it; "
                           "pass a dataset YAML naming the annotations")
    return Layout(fmt, p, p, entries, names, notes=[_entries_note(label, what, entries), *notes])


def _split_folders(p: Path, label: str) -> Optional[Layout]:
    """``train/``, ``valid/``, ``test/`` ... each holding ``images/`` + ``labels/`` (YOLO), ``images/``
    + ``annotations/`` or XML files beside the images (VOC)."""
    found: Dict[str, Tuple[str, str]] = {}
    for sub, split in SPLIT_NAMES.items():
        d = p / sub
        if split in found or not d.is_dir():
            continue
        xml_dir = next((x for x in XML_DIRS if _has(d / x, ".xml")), None)
        if (d / "images").is_dir() and (d / "labels").is_dir() and xml_dir != "labels":
            found[split] = ("yolo", f"{sub}/images")
        elif xml_dir is not None:
            found[split] = ("voc", f"{sub}/{xml_dir}")
        elif _has(d, ".xml"):
            found[split] = ("voc", sub)
    if not found:
        return None
    fmts = sorted({f for f, _ in found.values()})
    if len(fmts) > 1:
        raise DatasetError(f"{label}: the split folders mix formats: " +
                           ", ".join(f"{e} ({f})" for f, e in found.values()) + "; pass a dataset YAML")
    notes: List[str] = []
    names = _yolo_names(p, label, notes) if fmts[0] == "yolo" else None
    entries = {s: [e] for s, (_, e) in found.items()}
    note = _entries_note(label, f"split folders ({fmts[0]})", entries)
    return Layout(fmts[0], p, p, entries, names, notes=[note, *notes])


def find_yaml(p: Path) -> Optional[Path]:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (p / name).is_file():
            return p / name
    return None
