"""BN statistics that belong to the weights being evaluated ("precise BN", Detectron2's
``PreciseBN`` hook; Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

A BN layer's running statistics are an exponential average over the batches of *earlier* weights.
Caffe's decay of 0.999 (the original solver) averages over the last ~1,000 iterations, which is
right for a 100k-iteration run whose weights move slowly, and wrong for a run of a few hundred
iterations: there the average still carries the statistics of weights that no longer exist, and a
checkpoint evaluated with them can score near zero while the same weights with fresh statistics
score well (0.0004 vs 0.645 mAP on a held-back set; docs/RESULTS.md).

``recompute_bn_stats`` re-estimates them for the current weights: the training images, drawn and
augmented as in training at the training batch size (batch statistics are what the weights were
trained with), a plain (cumulative) average over ``images`` images, no gradients. The training
trajectory's own running buffers are returned so the caller can put them back: training never sees
the re-estimated values, so a run is the same with or without evaluations and resumes exactly.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def bn_buffers(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of every BN running buffer, keyed by its state-dict name."""
    out: Dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            for b in BUFFERS:
                out[f"{name}.{b}" if name else b] = getattr(m, b).detach().clone()
    return out


@torch.no_grad()
def load_bn_buffers(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy ``bn_buffers`` output back in place (the module objects, and their step counters, stay)."""
    own = dict(model.named_buffers())
    missing = [k for k in state if k not in own]
    if missing:
        raise KeyError(f"BN buffers not in the model: {missing[:3]}")
    for k, v in state.items():
        own[k].copy_(v.to(own[k].device))


@torch.no_grad()
def _average_across_processes(model: nn.Module) -> None:
    """Plain BN under DDP: every process estimated its statistics on its own share of the images;
    average them so all processes (and the checkpoint rank 0 writes) hold the estimate over all."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    stats = [t for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
             for t in (m.running_mean, m.running_var)]
    if not stats:
        return
    # one collective for all of them: one per tensor (196 on dsod-tiny) took 0.21-0.34 s on gloo, a quarter
    # of the whole re-estimation (2 processes, AMD Zen 4)
    flat = torch.cat([t.reshape(-1).float() for t in stats])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for t, v in zip(stats, flat.split([t.numel() for t in stats])):
        t.copy_(v.view_as(t))


def recompute_bn_stats(model: nn.Module, loader, device: torch.device,
                       autocast: Optional[contextlib.AbstractContextManager] = None) -> Dict[str, torch.Tensor]:
    """Re-estimate every BN layer's running statistics over ``loader``'s batches (images, targets)
    with the current weights; returns the previous buffers (``load_bn_buffers`` puts them back).

    ``torch.optim.swa_utils.update_bn`` does the averaging (momentum ``None``: a cumulative mean of
    the per-batch means and unbiased variances); ``CaffeBatchNorm2d`` honours that mode. Under DDP
    every process must call this with its own share of the batches (SyncBN then uses global batch
    statistics; plain BN is averaged afterwards)."""
    previous = bn_buffers(model)
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        update_bn(loader, model, device)
    _average_across_processes(model)
    return previous


@torch.no_grad()
def keep_better_statistics(model: nn.Module, running: Dict[str, torch.Tensor], precise_score: float,
                           score: Callable[[], Tuple[float, Any]]) -> Tuple[bool, float, Any]:
    """``model`` holds re-estimated statistics that scored ``precise_score``; score the running average
    (``running``) too and keep whichever is better. Returns (running kept, its score, ``score``'s result).

    For a run's final evaluation. Mid-run the running average is stale and the re-estimate rescues it;
    at the end of a schedule, where the weights have settled, the running average spans ~1/(1-decay)
    iterations of batches, more images than the re-estimate, and can be the better estimate of the
    same statistics (docs/RESULTS.md: 0.8605 running vs 0.8591 re-estimated on BCCD). Choosing between
    the two on the validation set is the selection best.pt already makes among iterations."""
    precise = bn_buffers(model)
    load_bn_buffers(model, running)
    running_score, result = score()
    if running_score > precise_score:
        return True, running_score, result
    load_bn_buffers(model, precise)
    return False, running_score, result
