"""SGD with the paper's settings, param groups, and the iteration-based LR schedule (ORIGINAL.md §1.9)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..model.norms import L2Norm


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm: bool) -> list[dict]:
    """The original applies weight decay to every conv, to backbone BN gamma/beta and to the L2Norm
    scales, and none to the head BN gamma/beta (ORIGINAL.md §1.1). ``no_decay_norm`` exempts all norm and
    L2Norm parameters (the common modern choice)."""
    decay, no_decay = [], []
    head_norms = {id(p) for m in getattr(model, "head", nn.Module()).modules()
                  if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for p in m.parameters()}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, L2Norm))
            (no_decay if (id(p) in head_norms or (no_decay_norm and is_norm)) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(total_iters: int, warmup_iters: int, schedule: str, milestones: Sequence[float],
              gamma: float = 0.1, warmup_factor: float = 0.001, min_factor: float = 0.01):
    """Multiplier of the base LR at iteration ``it``: linear warm-up from ``warmup_factor``, then
    ``multistep`` (x gamma at each milestone, given as fractions of the run: the paper's 20k/40k/
    60k/80k of 100k are 0.2/0.4/0.6/0.8) or ``cosine`` (down to ``min_factor``)."""
    steps = sorted(int(round(f * total_iters)) for f in milestones)

    def f(it: int) -> float:
        if schedule == "multistep":
            factor = gamma ** sum(it >= s for s in steps)
        elif schedule == "cosine":
            t = min(1.0, max(0.0, (it - warmup_iters) / max(1, total_iters - warmup_iters)))
            factor = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            raise ValueError(f"unknown schedule '{schedule}'; valid: multistep, cosine")
        if it < warmup_iters:
            factor *= warmup_factor + (1 - warmup_factor) * it / warmup_iters
        return factor

    return f


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                    no_decay_norm: bool) -> torch.optim.Optimizer:
    """``sgd``: the paper's SGD with momentum. ``adamw``: AdamW (betas (momentum, 0.999)), which
    converges much faster on the short CPU runs of tests and demos."""
    groups = param_groups(model, weight_decay, no_decay_norm)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def default_lr(effective_batch: int) -> float:
    """The paper's lr 0.1 at an effective batch of 128, scaled linearly (Goyal et al.'s rule)."""
    return 0.1 * effective_batch / 128


def default_warmup(total_iters: int) -> int:
    """5% of the run, at most 500 iterations."""
    return min(500, total_iters // 20)


def build_schedule(model: nn.Module, a, lr: float, warmup: int, total_iters: int):
    """The optimizer and the per-iteration LambdaLR of training arguments ``a``."""
    if a.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer={a.optimizer} is not valid; choose one of: sgd, adamw")
    optimizer = build_optimizer(model, a.optimizer, lr, a.momentum, a.weight_decay, a.no_decay_norm)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_iters, warmup, a.schedule,
                                                                             a.milestones))
