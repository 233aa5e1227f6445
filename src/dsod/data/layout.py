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


def read_folder(p: Path, data: str) -> Optional[Layout]:
    """The layout of a dataset folder, or None when it holds a dataset YAML (read that instead)."""
    label = f"data={data}"
    if (p / "Annotations").is_dir():
        sets = p / "ImageSets" / "Main"
        entries = {s: [str(sets / f"{s}.txt")] for s in VOC_SPLIT_FILES if (sets / f"{s}.txt").is_file()}
        notes = []
        if not entries:
            entries = {"train": [str(p)]}
            notes.append(f"{label}: no ImageSets/Main/{{train,val,trainval,test}}.txt; every XML in "
                         "Annotations/ is the 'train' split")
        return Layout("voc", p, p, entries, notes=notes)
    if find_yaml(p) is not None:
        return None
    if any(x.suffix.lower() == ".xml" for x in p.iterdir()):
        return Layout("voc", p, p, {"train": [str(p)]}, notes=[f"{label}: a folder of VOC XML files: one split, 'train'"])
    raise DatasetError(f"{label}: cannot tell the dataset format (no Annotations/ folder, no *.xml, "
                       "no data.yaml); pass a dataset YAML")


def find_yaml(p: Path) -> Optional[Path]:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (p / name).is_file():
            return p / name
    return None
