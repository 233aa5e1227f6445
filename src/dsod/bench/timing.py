"""Timers for ``dsod bench``: interleaved medians, the convolution ceiling (the FLOP floor's
denominator), the thread probe and a MAC counter (torch.utils.flop_counter)."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn


def _time_once(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(runners: Dict[str, Callable[[], Any]], runs: int, warmup: int = 2) -> Dict[str, float]:
    """Median seconds per runner, timing them round-robin (runs rounds, after warm-up)."""
    times: Dict[str, List[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in runners.values():
                fn()
        for _ in range(runs):
            for k, fn in runners.items():
                times[k].append(_time_once(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def conv_ceiling(runs: int = 5) -> Dict[str, Any]:
    """Best GFLOP/s of large 3x3 convolutions (NCHW and channels-last): the ceiling the FLOP floor uses."""
    shapes = [(64, 64, 150), (128, 128, 75), (256, 256, 38)]
    runners, flops = {}, {}
    for cin, cout, hw in shapes:
        for cl in (False, True):
            conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False).eval()
            x = torch.randn(1, cin, hw, hw)
            if cl:
                conv = conv.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            key = f"3x3 {cin}->{cout} @{hw}{' CL' if cl else ''}"
            runners[key] = (lambda c, t: (lambda: c(t)))(conv, x)
            flops[key] = 2 * cin * cout * 9 * hw * hw
    med = interleaved(runners, runs)
    per = {k: flops[k] / med[k] / 1e9 for k in med}
    best = max(per, key=per.get)
    return {"gflops": per[best], "best": best, "per_shape_gflops": {k: round(v, 1) for k, v in per.items()}}


def pick_threads(model: nn.Module, imgsz: int, runs: int) -> Tuple[int, Dict[str, float]]:
    """The intra-op thread count (1..cores) under which our eager model's batch-1 forward is fastest right
    now; every model and backend of the run then uses it (on a machine shared with other jobs, OpenMP
    with as many threads as cores can be many times slower than one thread)."""
    cores = os.cpu_count() or 1
    x = torch.zeros(1, 3, imgsz, imgsz)
    times: Dict[str, List[float]] = {str(t): [] for t in range(1, cores + 1)}
    with torch.inference_mode():
        for r in range(max(3, runs // 2 + 1) + 1):
            for t in range(1, cores + 1):
                torch.set_num_threads(t)
                dt = _time_once(lambda: model(x))
                if r:  # first round is warm-up
                    times[str(t)].append(dt)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return int(min(med, key=med.get)), med


def count_macs_fn(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return counter.get_total_flops() // 2
