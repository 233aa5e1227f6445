"""Throughput of the DSOD training data pipeline (decode + SSD augmentation, spec §1.8 + collate).

    .venv/bin/python benchmarks/bench_data.py                      # BCCD train, 300 px, 0 and 2 workers
    .venv/bin/python benchmarks/bench_data.py --data path/to/data.yaml --size 512 --workers 0 2 4

Per worker count: one warm-up batch (worker start-up, first decodes) is excluded, then ``--epochs``
passes over the split are timed. A per-stage breakdown (one process, mean ms per sample) follows, so
a slow pipeline can be traced to its stage.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from dsod.data import DetectionDataset, build_dataloader, load_dataset, load_image, train_transform

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DSOD_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bccd"


def loader_throughput(dataset, batch: int, workers: int, epochs: int, seed: int = 0):
    loader = build_dataloader(dataset, batch_size=batch, shuffle=True, workers=workers, seed=seed,
                              drop_last=True, persistent_workers=True)
    it = iter(loader)
    next(it)  # warm-up: worker start-up and the first decodes
    n, t0 = 0, time.perf_counter()
    for images, _ in it:
        n += images.shape[0]
    for _ in range(epochs - 1):
        for images, _ in loader:
            n += images.shape[0]
    return n, time.perf_counter() - t0


def stage_breakdown(records, size: int, n: int):
    transform = train_transform(size)
    ds = DetectionDataset(records, lambda image, target: (image, target))  # decode + wrap only
    times = defaultdict(float)
    for k in range(n):
        torch.manual_seed(k)
        t = time.perf_counter()
        load_image(records[k % len(records)].path)
        times["decode (PIL, EXIF, RGB)"] += time.perf_counter() - t
        sample = ds[k % len(records)]
        sample = (sample[0], {key: sample[1][key] for key in ("boxes", "labels", "difficult")})
        for step in transform.transforms:
            t = time.perf_counter()
            sample = step(*sample)
            times[type(step).__name__] += time.perf_counter() - t
    return {k: 1000 * v / n for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--split", default="train")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--stages", type=int, default=64, help="samples for the per-stage breakdown (0: skip)")
    a = ap.parse_args(argv)

    torch.set_num_threads(1)  # per process, as in DataLoader workers: numbers comparable across rows
    spec = load_dataset(a.data)
    records = spec.records(a.split)
    dataset = DetectionDataset(records, train_transform(a.size), train=True)
    print(f"data={a.data} [{a.split}]: {len(records)} images, input {a.size}x{a.size}, batch {a.batch}, "
          f"{os.cpu_count()} CPU(s), torch {torch.__version__}, 1 torch thread per process")
    print("\n| workers | samples | seconds | samples/s | ms/sample |\n|---:|---:|---:|---:|---:|")
    for w in a.workers:
        n, sec = loader_throughput(dataset, a.batch, w, a.epochs)
        print(f"| {w} | {n} | {sec:.2f} | {n / sec:.1f} | {1000 * sec / n:.1f} |", flush=True)
    if a.stages:
        print(f"\nper-stage mean over {a.stages} samples (one process):")
        for k, v in stage_breakdown(records, a.size, a.stages).items():
            print(f"  {k:<28} {v:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
