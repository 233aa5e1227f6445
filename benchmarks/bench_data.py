"""Throughput of the DSOD training data pipeline (decode + SSD augmentation, ORIGINAL.md §1.8 + collate).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py          # bccd, chess_rf100, coco128
    .venv/bin/python benchmarks/bench_data.py --data path/to/data.yaml --size 512 --workers 0 2 4
    .venv/bin/python benchmarks/bench_data.py --pipelines fast --modes light --samples 256

For every dataset (``--data``, several allowed; default: the three sets under the shared data folder),
augmentation mode (``--modes``) and pipeline (``--pipelines``): ``reference`` is
``transforms.reference_train_transform`` (Caffe's order on full-size pixels, the "before" of issue
12), ``full`` is ``augment.SSDAugment`` decoding at full size, ``fast`` is what ``train_transform``
gives (``SSDAugment`` with reduced-size JPEG decoding). Per worker count: ``--rounds`` rounds, each
timing every pipeline in turn (a ``DetectionDataset`` loader over the same shuffled samples, after one
warm-up batch: worker start-up, first decodes), so that the load of a shared machine hits all
pipelines alike; the median round is reported.
A per-stage breakdown (one process, mean ms per sample) follows each pipeline, so a slow pipeline can
be traced to its stage; ``decoded MP`` is the mean size of the decoded image. The summary compares
samples/s with ``--train-rate`` (the model's training images/s: the loader should deliver >= 3x).
One torch thread per process, as in DataLoader workers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torchvision import tv_tensors

from dsod.data import DetectionDataset, build_dataloader, load_dataset, load_image, train_transform
from dsod.data.augment import SSDAugment
from dsod.data.transforms import reference_train_transform

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DSOD_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_DATA = [SHARED / "bccd", SHARED / "chess_rf100",
                SHARED / "coco128" / "object_detection" / "config.yaml"]
PIPELINES = ("reference", "full", "fast")


def make_transform(pipeline: str, size: int, mode: str):
    if pipeline == "reference":
        return reference_train_transform(size, mode=mode)
    if pipeline == "full":
        return SSDAugment(size, mode=mode, reduced_decode=False)
    return train_transform(size, mode=mode)


def loader_throughput(dataset, batch: int, workers: int, samples: int, seed: int = 0):
    loader = build_dataloader(dataset, batch_size=batch, shuffle=True, workers=workers, seed=seed,
                              drop_last=True)
    batches = max(1, samples // batch)
    n, t0, done = 0, 0.0, 0
    while done <= batches:  # passes over the split until enough batches (small splits)
        for images, _ in loader:
            if done == 0:
                t0 = time.perf_counter()  # after the warm-up batch
            else:
                n += images.shape[0]
            done += 1
            if done > batches:
                break
    return n, time.perf_counter() - t0


def _chw(pixels):
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def fast_stages(dataset, n: int):
    """SSDAugment's phases, timed one by one (the same calls as ``DetectionDataset._planned``)."""
    aug, records, times, mp = dataset.transform, dataset.records, defaultdict(float), 0.0
    for k in range(n):
        rec = records[k % len(records)]
        torch.manual_seed(k)
        t = time.perf_counter()
        target = dataset.record_target(rec, int(rec.height), int(rec.width))
        plan = aug.plan(target)
        times["plan (draws, boxes)"] += time.perf_counter() - t
        t = time.perf_counter()
        image = _chw(load_image(rec.path, min_size=aug.decode_size(plan)))
        times["decode (reduced JPEG)" if aug.reduced_decode else "decode (full)"] += time.perf_counter() - t
        mp += image.shape[-1] * image.shape[-2] / 1e6
        t = time.perf_counter()
        pixels, where = aug.region(image, plan)
        times["crop + resize"] += time.perf_counter() - t
        t = time.perf_counter()
        if pixels is not None:
            pixels = aug.distort.transform(pixels, plan["distort"])
        times["photometric distort"] += time.perf_counter() - t
        t = time.perf_counter()
        aug.to_input(aug.compose(pixels, where, plan), plan["target"])
        times["fill, mirror, normalise"] += time.perf_counter() - t
    return {k: 1000 * v / n for k, v in times.items()}, mp / n


def reference_stages(dataset, n: int):
    steps, records, times, mp = dataset.transform.transforms, dataset.records, defaultdict(float), 0.0
    for k in range(n):
        rec = records[k % len(records)]
        torch.manual_seed(k)
        t = time.perf_counter()
        pixels = load_image(rec.path)
        image = _chw(pixels)
        times["decode (full)"] += time.perf_counter() - t
        mp += image.shape[-1] * image.shape[-2] / 1e6
        sample = (tv_tensors.Image(image), dataset.record_target(rec, *pixels.shape[:2]))
        for step in steps:
            name = type(step).__name__
            name = "Resize (random interpolation)" if name == "RandomChoice" else name
            t = time.perf_counter()
            sample = step(*sample)
            times[name] += time.perf_counter() - t
    return {k: 1000 * v / n for k, v in times.items()}, mp / n


def _name(p: Path) -> str:
    try:  # the shared sets by their folder (coco128/object_detection/config.yaml -> coco128)
        return p.resolve().relative_to(SHARED.resolve()).parts[0]
    except ValueError:
        return p.name if p.is_dir() else p.parent.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=[str(p) for p in DEFAULT_DATA])
    ap.add_argument("--split", default="train")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--modes", nargs="+", default=["ssd", "light"], choices=["ssd", "light"])
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=96, help="timed samples per pipeline, all rounds together")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    ap.add_argument("--stages", type=int, default=32, help="samples for the per-stage breakdown (0: skip)")
    ap.add_argument("--train-rate", type=float, default=3.5,
                    help="the model's training images/s on one core (dsod-tiny, batch 16, 300 px: 3-4)")
    a = ap.parse_args(argv)

    torch.set_num_threads(1)  # per process, as in DataLoader workers: numbers comparable across rows
    print(f"{os.cpu_count()} CPU(s), torch {torch.__version__}, 1 torch thread per process, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, input {a.size}x{a.size}, "
          f"batch {a.batch}, load average {os.getloadavg()[0]:.2f}")
    per_round = max(a.batch, a.samples // a.rounds // a.batch * a.batch)
    summary = []
    for data in a.data:
        records = load_dataset(data).records(a.split)
        name = _name(Path(data))
        print(f"\n## {name} ({data} [{a.split}]): {len(records)} images")
        for mode in a.modes:
            datasets = {p: DetectionDataset(records, make_transform(p, a.size, mode), train=True)
                        for p in a.pipelines}
            print(f"\n### augment={mode}: samples/s per round ({a.rounds} rounds of {per_round} samples, "
                  "pipelines interleaved; the same shuffled samples for each)\n")
            print("| workers | pipeline | " + " | ".join(f"round {r + 1}" for r in range(a.rounds))
                  + " | median | ms/sample |\n|---:|---|" + "---:|" * (a.rounds + 2))
            rates = {}
            for w in a.workers:
                runs = {p: [] for p in a.pipelines}
                for r in range(a.rounds):  # round-robin: a load change on a shared machine hits all
                    for p in a.pipelines:
                        n, sec = loader_throughput(datasets[p], a.batch, w, per_round, seed=r)
                        runs[p].append(n / sec)
                for p in a.pipelines:
                    med = statistics.median(runs[p])
                    rates.setdefault(p, med)
                    print(f"| {w} | {p} | " + " | ".join(f"{v:.1f}" for v in runs[p])
                          + f" | **{med:.1f}** | {1000 / med:.1f} |", flush=True)
            if a.stages:
                for p in a.pipelines:
                    stages = reference_stages if p == "reference" else fast_stages
                    times, mp = stages(datasets[p], a.stages)
                    print(f"\n{p}: per-stage mean over {a.stages} samples (one process), decoded {mp:.2f} MP:")
                    for k, v in times.items():
                        print(f"  {k:<30} {v:7.2f} ms")
                    print(f"  {'total':<30} {sum(times.values()):7.2f} ms", flush=True)
            summary.append((name, mode, rates))
    print(f"\n## summary: median samples/s, workers={a.workers[0]} (x training: / {a.train_rate} images/s); "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| data | augment | " + " | ".join(a.pipelines) + " | speed-up | x training |")
    print("|---|---|" + "---:|" * (len(a.pipelines) + 2))
    for name, mode, rates in summary:
        last = rates[a.pipelines[-1]]
        up = f"{last / rates['reference']:.1f}x" if "reference" in rates else "-"
        print(f"| {name} | {mode} | " + " | ".join(f"{rates[p]:.1f}" for p in a.pipelines)
              + f" | {up} | {last / a.train_rate:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
