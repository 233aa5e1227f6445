"""What a training checkpoint holds beyond the self-describing model (``checkpoint.model_payload``),
and putting it back: the exact resume of a run (optimizer, schedule, scaler, RNG, data position,
history, EMA, the time plan) after Ctrl-C, a kill or a crash.

``model`` holds the weights to evaluate (the EMA's when on) with the BN statistics ``bn_stats`` names
(re-estimated "precise" ones for an evaluated checkpoint); ``train_bn`` the running buffers training
had before, ``train_model`` the raw training weights when the EMA is on."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

from ..model.checkpoint import load_weights, model_payload, rng_state, set_rng_state
from .precise_bn import load_bn_buffers
from .run import args_dict


def run_record(t) -> Dict[str, Any]:
    """args.yaml of trainer ``t``: the arguments as given and what was decided for them."""
    from ..runtime.allocator import active_allocator

    extra = {"data_resolved": t.data_resolved, "effective_batch": t.effective_batch, "lr_resolved": t.lr,
             "total_iterations": t.total_iters, "world_size": t.world, "numerics": t.numerics.describe(),
             "threads": torch.get_num_threads(), "allocator": active_allocator(), "decisions": list(t.notes)}
    if t.budget is not None:
        extra["budget"] = dataclasses.asdict(t.budget)
    if t.anchor_fit is not None:
        extra["anchor_fit"] = t.anchor_fit
    return {**args_dict(t.args), **extra}


def _train_geometry(t) -> Optional[Dict[str, float]]:
    """The training images' sizes (``inference.slicing.train_geometry``, for ``slice=auto``), once."""
    from ..inference.slicing import train_geometry

    if getattr(t, "_train_geometry", None) is None:
        t._train_geometry = train_geometry(t.train_set.records)
    return t._train_geometry


def training_payload(t, metrics: Optional[Dict[str, Any]] = None,
                     train_bn: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, Any]:
    """The checkpoint of trainer ``t`` as it stands."""
    p = model_payload(t.eval_model, t.cfg, t.info.names, t.info.category_ids, metrics)
    p.update({
        "bn_stats": f"precise ({t.precise_images} training images)" if train_bn is not None else "running",
        "weights": "ema" if t.ema is not None else "training",
        "train_bn": train_bn,
        "train_model": t.model.state_dict() if t.ema is not None else None,
        "ema": t.ema.meta() if t.ema is not None else None,
        "train_args": args_dict(t.args), "iteration": t.iteration, "epoch": t.epoch,
        "batch_in_epoch": t.batch_in_epoch, "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict() if t.use_amp else None,
        "rng": rng_state(), "history": t.history, "best_fitness": t.best_fitness,
        "best_iteration": t.best_iteration, "total_iters": t.total_iters, "val_interval": t.val_interval,
        "anchor_fit": t.anchor_fit, "dataset_format": t.info.format, "world_size": t.world,
        "train_geometry": _train_geometry(t),
    })
    return p


def restore_training(t, ckpt: Dict[str, Any]) -> None:
    """Put trainer ``t`` back where ``ckpt`` was written."""
    if t.ema is not None:
        load_weights(t.model, ckpt["train_model"], "training", ckpt.get("loaded_from", ""))
        t.ema.load_meta(ckpt["ema"])
    load_weights(t.eval_model, ckpt["model"], source=ckpt.get("loaded_from", ""))
    if ckpt.get("train_bn"):
        load_bn_buffers(t.eval_model, ckpt["train_bn"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        t.scaler.load_state_dict(ckpt["scaler"])
    t.iteration, t.epoch, t.batch_in_epoch = int(ckpt["iteration"]), int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
    t.history = list(ckpt.get("history") or [])
    # results.csv's time_s goes on from the last evaluation's, not from 0
    t.time_offset = float(t.history[-1].get("time_s", 0.0)) if t.history else 0.0
    t.best_fitness = float(ckpt.get("best_fitness", -1.0))
    t.best_iteration = int(ckpt.get("best_iteration", 0))
    if ckpt.get("val_interval"):
        t.val_interval = int(ckpt["val_interval"])
    set_rng_state(ckpt["rng"])
