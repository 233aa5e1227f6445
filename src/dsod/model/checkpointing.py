"""Memory-efficient training: selective recomputation of the cheap, large activations (spec-neutral).

``concat_then`` / ``recompute_cheap`` run a piece of the network under ``torch.utils.checkpoint`` with a
policy that keeps only convolution outputs; everything else (concat, BN, ReLU, pooling, L2Norm) is
recomputed in backward. ``in_recomputation()`` lets the BN layers (``norms``) skip their running
statistics during that re-run. Depends on torch only, so every model module can import it.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import List

import torch
from torch import nn

_recompute_state = threading.local()


def in_recomputation() -> bool:
    """True while ``torch.utils.checkpoint`` re-runs a memory-efficient dense layer in backward."""
    return getattr(_recompute_state, "active", False)


@contextlib.contextmanager
def _recomputation():
    prev = in_recomputation()
    _recompute_state.active = True
    try:
        yield
    finally:
        _recompute_state.active = prev


def _save_conv_outputs(ctx, op, *args, **kwargs):
    """Selective-checkpoint policy: keep convolution outputs, recompute everything else (concat, BN,
    ReLU: memory-bound and cheap). No convolution runs twice."""
    from torch.utils.checkpoint import CheckpointPolicy

    if op is torch.ops.aten.convolution.default:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _checkpoint_contexts():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    forward_ctx, recompute_ctx = create_selective_checkpoint_contexts(_save_conv_outputs)

    @contextlib.contextmanager
    def recompute():
        with recompute_ctx, _recomputation():
            yield

    return forward_ctx, recompute()


def _concat_then(layer: nn.Module, *features: torch.Tensor) -> torch.Tensor:
    return layer(torch.cat(features, dim=1))


def concat_then(module: nn.Module, features: List[torch.Tensor]) -> torch.Tensor:
    """``module(torch.cat(features, 1))`` under a selective checkpoint: the concat and the BN/ReLU
    outputs inside ``module`` are recomputed in backward, its convolution outputs are kept."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(functools.partial(_concat_then, module), *features, use_reentrant=False,
                      context_fn=_checkpoint_contexts, preserve_rng_state=False)


def wants_recompute(module: nn.Module) -> bool:
    """Whether a ``memory_efficient`` module should run its checkpointed path in this forward."""
    return module.memory_efficient and module.training and torch.is_grad_enabled()


def recompute_cheap(fn, *inputs: torch.Tensor):
    """``fn(*inputs)`` under the same selective checkpoint as ``concat_then``: convolution outputs are
    kept, everything else ``fn`` computes (BN, ReLU, pooling and its int64 indices, L2Norm) is
    recomputed in backward. For the memory-efficient parts outside the dense blocks."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *inputs, use_reentrant=False, context_fn=_checkpoint_contexts, preserve_rng_state=False)
