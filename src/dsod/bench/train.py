"""``dsod bench``'s training section: images/s and peak memory per extra image of one training step,
for the old default path, the new default, each switch alone, and the torchvision peers, each
configuration in fresh processes (``engine.train_probe``), round-robin over ``rounds`` so that load
from other processes hits them alike. Ratios are against the old default path of the same run."""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Dict, List, Optional

from ..engine.train_probe import TrainConfig, default_train_config, train_cost

# The reference path, the plainest configuration: glibc with a 1 MiB mmap threshold, NCHW, fp32, 1 thread.
OLD_DEFAULT = TrainConfig(allocator="mmap1m", channels_last=False, bf16=False, threads=1, processes=1)


def configurations(cores: int) -> Dict[str, TrainConfig]:
    """old default, new default, and the old default with each switch of the new one alone."""
    new = default_train_config(cores)
    out = {"old_default": OLD_DEFAULT, "new_default": new}
    for alloc in ("glibc", "jemalloc"):
        out[f"allocator={alloc}"] = dataclasses.replace(OLD_DEFAULT, allocator=alloc)
    out["channels_last"] = dataclasses.replace(OLD_DEFAULT, channels_last=True)
    out["bf16"] = dataclasses.replace(OLD_DEFAULT, bf16=True)
    if cores > 1:
        out[f"threads={cores}"] = dataclasses.replace(OLD_DEFAULT, threads=cores)
        out[f"processes={cores}"] = dataclasses.replace(OLD_DEFAULT, processes=cores)
        out[f"processes={cores},syncbn"] = dataclasses.replace(OLD_DEFAULT, processes=cores, syncbn=True)
    out["new_default,standard"] = dataclasses.replace(new, memory_efficient=False)
    # the new default on glibc's allocator: the default should be within 5% of the fastest
    # allocator measured, so the same configuration on the other allocator is timed beside it
    if new.allocator != "glibc":
        out["new_default/allocator=glibc"] = dataclasses.replace(new, allocator="glibc")
    return out


def training_section(name: str, batch: int, steps: int, peers: List[str], cores: int,
                     imgsz: Optional[int] = None, rounds: int = 1, only: Optional[List[str]] = None
                     ) -> Dict[str, Any]:
    cfgs = configurations(cores)
    if only:
        cfgs = {k: v for k, v in cfgs.items() if k in only or k in ("old_default", "new_default")}
    new = cfgs["new_default"]
    jobs = {k: ("ours", name, c) for k, c in cfgs.items()}
    for p in peers:  # torchvision's models as they come (NCHW fp32), on the new default's cores/allocator
        jobs[p] = ("peer", p, dataclasses.replace(new, channels_last=False, bf16=False))
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in jobs}
    for _ in range(max(1, rounds)):
        for key, (kind, model, cfg) in jobs.items():
            runs[key].append(train_cost(kind, model, batch, steps, cfg, imgsz if kind == "ours" else None))
    out: Dict[str, Any] = {}
    for key, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out[key] = rs[0]
            continue
        best = dict(ok[0])
        best["train_img_s"] = statistics.median(r["train_img_s"] for r in ok)
        best["memory_gb_per_image"] = statistics.median(r["memory_gb_per_image"] for r in ok)
        best["train_img_s_runs"] = [r["train_img_s"] for r in ok]
        out[key] = best
    ref = out.get("old_default", {}).get("train_img_s")
    for r in out.values():
        if ref and "train_img_s" in r:
            r["speedup_vs_old_default"] = r["train_img_s"] / ref
    return {"model": name, "batch": batch, "steps": steps, "rounds": rounds, "results": out}


def print_training(section: Dict[str, Any]) -> None:
    print(f"training step, {section['model']} at batch {section['batch']} (median of {section['rounds']} round(s), "
          "fresh processes):")
    print(f"  {'configuration':26s} {'setting':38s} {'img/s':>7s} {'x old':>6s} {'GB/extra img':>12s} {'live GB':>8s}")
    for key, r in section["results"].items():
        if "error" in r:
            print(f"  {key:26s} failed: {r['error']}")
            continue
        live = f"{r['live_gb_per_image']:.3f}" if r.get("live_gb_per_image") is not None else "-"
        print(f"  {key:26s} {r['config']:38s} {r['train_img_s']:7.2f} {r.get('speedup_vs_old_default', 0):6.2f} "
              f"{r['memory_gb_per_image']:12.3f} {live:>8s}")
