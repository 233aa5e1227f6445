"""Exponential moving average of the weights (Polyak averaging; Ultralytics' ``ModelEMA``, timm's
``ModelEmaV2``), used for validation and saved as the checkpoint's weights.

``decay(n) = base * (1 - exp(-n / tau))``: the average starts as a copy and forgets quickly at first
(the early weights are far from anything worth keeping), then settles at ``base``. Ultralytics uses
base 0.9999 and tau 2000 for runs of tens of thousands of iterations; a CPU run of a few hundred would
never leave the ramp, so both scale with the run's length here (``for_run``): the average spans ~5%
of the run at the end.

Written by hand rather than with ``torch.optim.swa_utils.AveragedModel`` because the decay ramp, the
Caffe BN buffers (floats averaged, the step counter copied) and an exact resume need the update count
and the averaged state as plain checkpoint data; the update itself is one ``torch._foreach_lerp_``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, base: float = 0.9999, tau: float = 2000.0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.base, self.tau = float(base), float(tau)
        self.updates = 0

    @classmethod
    def for_run(cls, model: nn.Module, total_iters: int) -> "ModelEMA":
        """Averaging horizon ~5% of the run (10 to 5,000 iterations), ramp over the same span."""
        horizon = min(5000.0, max(10.0, 0.05 * total_iters))
        return cls(model, base=1.0 - 1.0 / horizon, tau=horizon)

    def decay(self) -> float:
        return self.base * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        ours, theirs = [], []
        for (name, e), m in zip(self.module.state_dict().items(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                ours.append(e)
                theirs.append(m.detach())
            else:  # BN step counters: the training run's
                e.copy_(m)
        # e <- d * e + (1 - d) * m, i.e. lerp towards the training weights by (1 - d)
        torch._foreach_lerp_(ours, theirs, 1.0 - d)

    def meta(self) -> Dict[str, Any]:
        """Everything but the averaged weights (the checkpoint's ``model`` holds those)."""
        return {"updates": self.updates, "base": self.base, "tau": self.tau}

    def load_meta(self, meta: Dict[str, Any]) -> None:
        self.updates = int(meta["updates"])
        self.base, self.tau = float(meta["base"]), float(meta["tau"])
