"""Split lists: ``.txt`` or ``.csv`` files naming the images of a split, shared by the VOC and YOLO
readers.

- ``.txt``: one entry per line (``#`` comments and blank lines skipped); VOC id lists keep only the
  first token (``ImageSets/Main/cat_train.txt`` lines are ``<id> <flag>``), YOLO lists the whole
  line (Ultralytics: a path, which may contain spaces).
- ``.csv``: the column named most like a file (``filename``, ``file_name``, ``image`` ... before
  ``name``, ``path``, ``id``; the header row is then skipped), else the first column. A name
  repeated on several rows (exports with one row per box) is kept once.

Entries may be stems (``BloodImage_00001``), file names (``BloodImage_00001.jpg``) or relative paths;
``entry_stem`` reduces them to the stem that pairs an image with its annotation. Only an image or XML
suffix is dropped: Roboflow stems contain dots (``x_jpg.rf.4443376f``).
"""
from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import List, Tuple

from .images import is_image_file
from .records import SplitReport

LIST_SUFFIXES = (".txt", ".csv")
NAME_COLUMNS = ("filename", "file_name", "file", "image", "image_name", "image_file", "image_path", "img",
                "image_id", "name", "path", "id", "stem")


def is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES


def entry_stem(entry: str) -> str:
    name = PurePosixPath(entry.replace("\\", "/")).name
    return Path(name).stem if is_image_file(name) or name.lower().endswith(".xml") else name


def read_name_list(path: Path, report: SplitReport, whole_line: bool = False) -> List[Tuple[int, str]]:
    """(line number, entry) for every image the list names; [] after reporting an unreadable file."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # -sig: spreadsheet exports add a BOM
    except OSError as e:
        report.problem(path, f"cannot read the split list ({e.strerror or e})", "unreadable file")
        return []
    lines = text.splitlines()
    if path.suffix.lower() != ".csv":
        out = []
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((n, line if whole_line else line.split()[0]))
        return out
    rows = [(n, row) for n, row in enumerate(csv.reader(lines), 1) if any(c.strip() for c in row)]
    col = 0
    if rows:
        header = [c.strip().lower() for c in rows[0][1]]
        named = sorted((NAME_COLUMNS.index(c), i) for i, c in enumerate(header) if c in NAME_COLUMNS)
        if named:  # the most file-like column name wins: "filename" over a row number "id"
            col, rows = named[0][1], rows[1:]
    out, seen = [], set()
    for n, row in rows:
        entry = row[col].strip() if col < len(row) else ""
        if entry and entry not in seen:
            seen.add(entry)
            out.append((n, entry))
    return out
