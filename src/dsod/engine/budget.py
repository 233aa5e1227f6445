"""``time=``: a training run that fits a wall-clock budget, evaluations included (Ultralytics' ``time=``).

The run times a few training steps before it starts (``probe_step_seconds``, called by the trainer:
forward, backward and data loading, no optimizer step, BN statistics put back), plans the iteration count and
the number of evaluations from that, and re-plans after every evaluation with what it measured since
(step time and evaluation time), stretching or shrinking the LR schedule. If it still falls behind
(a machine that got busy), it ends early with its final evaluation rather than overrun.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import List, Optional

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
EVAL_SHARE = 0.10  # evaluations get at most ~10% of the budget ...
MIN_EVALS, MAX_EVALS = 3, 10  # ... but at least 3 (best.pt, patience) and at most 10 (the default)
RESERVE = 0.02  # kept for the final save and plots


def parse_duration(value) -> Optional[float]:
    """Seconds in ``30m``, ``2h``, ``1h30m``, ``90s``, ``1.5h``; a bare number is hours (as Ultralytics'
    ``time=``). None/"none"/0: no budget."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    if text in ("", "none", "null", "0"):
        return None
    try:
        hours = float(text)
    except ValueError:
        pass
    else:
        if hours <= 0 or not math.isfinite(hours):
            raise ValueError(f"time={value} must be positive")
        return hours * 3600.0
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"time={value} is not a duration; use e.g. 30m, 2h, 1h30m or 90s (a bare number is hours)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"time={value} must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@dataclass
class Budget:
    """The plan of a ``time=`` run. Times are seconds since the run started (``elapsed``)."""

    seconds: float
    step_seconds: float  # one optimizer step, data loading included
    eval_seconds: float  # one evaluation (precise BN + validation + checkpoint), estimated then measured
    total_iters: int = 0
    val_interval: int = 1
    evaluations: int = MIN_EVALS
    eval_times: List[float] = field(default_factory=list)
    replans: int = 0

    def plan(self, iteration: int, elapsed: float) -> None:
        """Choose ``total_iters`` and the spacing of the evaluations still to come so that the rest of
        the run, those evaluations included, ends at the budget."""
        self.evaluations = int(min(MAX_EVALS, max(MIN_EVALS, EVAL_SHARE * self.seconds // max(1e-6, self.eval_seconds))))
        remaining = max(1, self.evaluations - len(self.eval_times))
        left = self.seconds * (1 - RESERVE) - elapsed - remaining * self.eval_seconds
        steps = max(1, int(left // max(1e-6, self.step_seconds)))
        self.total_iters = iteration + steps
        self.val_interval = max(1, math.ceil(steps / remaining))

    def observe(self, iteration: int, elapsed: float, step_seconds: float, eval_seconds: float) -> None:
        """After an evaluation: re-plan with the measured step and evaluation times."""
        self.eval_times.append(eval_seconds)
        self.eval_seconds = sorted(self.eval_times)[len(self.eval_times) // 2]
        self.step_seconds = step_seconds
        self.replans += 1
        self.plan(iteration, elapsed)

    def behind(self, elapsed: float) -> bool:
        """True when one more step and the final evaluation would overrun the budget."""
        return elapsed + self.step_seconds + self.eval_seconds > self.seconds * (1 - RESERVE / 2)

    def describe(self) -> str:
        return (f"time budget {format_duration(self.seconds)}: {self.step_seconds:.2f} s per iteration measured -> "
                f"{self.total_iters} iterations, {self.evaluations} evaluations of ~{self.eval_seconds:.0f} s "
                f"(re-planned after each evaluation)")


def estimate_eval_seconds(step_seconds: float, images_per_step: int, val_images: int, precise_images: int,
                          world: int) -> float:
    """An evaluation's seconds before one has run: a forward costs ~1/3 of a training step per image;
    validation runs on rank 0 only (x1.5 for decoding, post-processing and the evaluator), precise BN
    on every process; 2 s for the checkpoints."""
    forward = step_seconds / max(1, images_per_step) / 3
    return 1.5 * forward * val_images + forward * precise_images / max(1, world) + 2.0


def probe_step_seconds(net, model, batches, step_loss, steps: int = 4) -> float:
    """Seconds per training step (data loading, forward, loss, backward; no optimizer step) over
    ``steps`` batches after one warm-up batch. ``step_loss(net, images, targets)`` returns (loss, parts).
    The BN running statistics are put back afterwards and gradients cleared: the run starts as if
    the probe had not happened (BN in cumulative mode meanwhile, so Caffe BN's step count is kept)."""
    import time

    from torch.nn.modules.batchnorm import _BatchNorm

    from .precise_bn import bn_buffers, load_bn_buffers

    saved = bn_buffers(model)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = None
    times = []
    try:
        t0 = time.perf_counter()
        for i, (images, targets) in enumerate(batches):
            step_loss(net, images, targets)[0].backward()
            t1 = time.perf_counter()
            if i > 0:  # the first batch pays for worker start-up and first-touch allocations
                times.append(t1 - t0)
            t0 = t1
            if len(times) == steps:
                break
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        load_bn_buffers(model, saved)
        for p in model.parameters():
            p.grad = None
    return sorted(times)[len(times) // 2] if times else 0.0
