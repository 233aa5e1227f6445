"""What a run needs around the training loop: its device, its results folder and its files.

Shared by ``dsod train``, ``dsod val``/``predict`` (device, results folder) and the ablation (CSV), so
it lives apart from the trainer. Every file is written through a temporary file and a rename: an
interrupted run never leaves a half-written CSV or YAML.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Dict, List

from ..errors import DsodError
from ..files import atomic_path, atomic_write_text


class TrainingError(DsodError):
    """A user-facing training failure (one line)."""


def next_run_dir(project: str, name: str, exist_ok: bool) -> Path:
    """``project/name``, or ``name2``, ``name3``... when it exists (Ultralytics' convention)."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    i = 2
    while (Path(project) / f"{name}{i}").exists():
        i += 1
    return Path(project) / f"{name}{i}"


def args_dict(args: Any) -> Dict[str, Any]:
    """A dataclass of arguments as plain YAML/checkpoint data (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(args).items()}


def write_yaml(path: Path, data: Dict[str, Any]) -> None:
    import yaml
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def append_csv(path: Path, row: Dict[str, Any]) -> None:
    """Add ``row`` to the CSV at ``path``; a new column extends the header of every row."""
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    rows.append({k: str(v) for k, v in row.items()})
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    write_csv(path, rows, keys)


def write_csv(path: Path, rows: List[Dict[str, Any]], keys: List[str]) -> None:
    """Write ``rows`` as CSV through a temporary file and a rename (never a half-written file)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
