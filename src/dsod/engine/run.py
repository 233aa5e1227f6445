"""What a run needs around the training loop: its device, its results folder and its files.

Shared by ``dsod train``, ``dsod val``/``predict`` (device, results folder) and the ablation (CSV), so
it lives apart from the trainer. Every file is written through a temporary file and a rename: an
interrupted run never leaves a half-written CSV or YAML.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List

import torch

from . import distributed as dist_utils


class TrainingError(Exception):
    """A user-facing training failure (one line)."""


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        _, local_rank, world = dist_utils.env_world()
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank if world > 1 else 0)
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise TrainingError(f"device={spec} is not valid; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device={spec}: CUDA is not available on this machine; use device=cpu")
    return dev


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


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
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
