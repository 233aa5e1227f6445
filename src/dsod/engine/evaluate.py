"""Run a detector over an evaluation loader and feed the one evaluator (``dsod.metrics``).

Validation runs through the one evaluation loop (``dsod.metrics.loop``) that ``dsod val`` uses."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Optional

import torch

from ..inference.postprocess.detection_output import PostProcessor
from ..inference.runners import TorchRunner, detector
from ..metrics.loop import evaluate


def autocast_context(device: torch.device, amp: bool, bf16: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_evaluation(model: torch.nn.Module, loader, evaluator, device: torch.device,
                   postprocessor: Optional[PostProcessor] = None, amp: bool = False, bf16: bool = False,
                   progress: bool = True, desc: str = "val"):
    """Training's validation: ``model`` (in its training numerics) through the one evaluation loop
    (``dsod.metrics.loop``), as ``dsod val`` scores a checkpoint. Returns ``evaluator.compute()``."""
    was_training = model.training
    runner = TorchRunner(model, device, autocast=lambda: autocast_context(device, amp, bf16))
    try:
        return evaluate(detector(runner, postprocessor or PostProcessor()), loader, evaluator, progress, desc)
    finally:
        model.train(was_training)


def metric_columns(metrics: Dict[str, Any]) -> Dict[str, float]:
    """The results.csv columns of an evaluation."""
    return {"voc07_map50": round(float(metrics.get("voc07_map50", float("nan"))), 5),
            "voc_area_map50": round(float(metrics.get("voc_area_map50", float("nan"))), 5),
            "coco_ap": round(float(metrics.get("coco", {}).get("AP", float("nan"))), 5)}


def fitness_key(dataset_format: str) -> str:
    """The results.csv column best.pt is chosen on: COCO AP for COCO data (its own metric), VOC07
    mAP@0.5 otherwise."""
    return "coco_ap" if dataset_format == "coco" else "voc07_map50"


def fitness(row: Dict[str, Any], dataset_format: str) -> float:
    """What best.pt is chosen on (``fitness_key``); without validation, the lower training loss."""
    v = row.get(fitness_key(dataset_format))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return -float(row.get("loss", 0.0))
    return float(v)


def keep_better_bn(model: torch.nn.Module, train_bn: Dict[str, torch.Tensor], row: Dict[str, Any],
                   metrics: Dict[str, Any], score: Callable[[], Dict[str, Any]],
                   dataset_format: str) -> Optional[Dict[str, torch.Tensor]]:
    """A run's final evaluation: ``model`` holds re-estimated BN statistics whose ``metrics`` are in
    ``row``; score the running average (``train_bn``) too and keep the better
    (``precise_bn.keep_better_statistics``). Both scores go to ``row``; ``row`` and ``metrics`` become
    the kept one's. Returns ``train_bn``, or None when the running average was kept."""
    from .precise_bn import keep_better_statistics

    def scored():
        m = score()
        return fitness(metric_columns(m), dataset_format), m

    key = fitness_key(dataset_format)
    kept_running, value, result = keep_better_statistics(model, train_bn, fitness(row, dataset_format), scored)
    row[f"{key}_precise_bn"], row[f"{key}_running_bn"] = row[key], round(value, 5)
    if not kept_running:
        return train_bn
    metrics.clear()
    metrics.update(result)
    row.update(metric_columns(result))
    return None


def evaluation_line(row: Dict[str, Any], dataset_format: str) -> str:
    """The line an evaluation prints: its scores and, at a run's end, which BN statistics were kept."""
    key = fitness_key(dataset_format)
    both = ""
    if key + "_running_bn" in row:
        both = (f"  (final BN statistics: re-estimated {row[key + '_precise_bn']:.4f}, running "
                f"{row[key + '_running_bn']:.4f}; {row['bn_stats']} kept)")
    return (f"iter {row['iteration']}: mAP@0.5 (VOC07 11-point) {row['voc07_map50']:.4f}  "
            f"COCO AP {row['coco_ap']:.4f}{both}")


def patience_reason(history, best_iteration: int, patience: int, iteration: int) -> str:
    """Why ``patience=`` ends the run now ("" while it goes on): ``patience`` evaluations in
    ``history`` since the best one."""
    since = sum(1 for r in history if r["iteration"] > best_iteration)
    if since < patience:
        return ""
    return (f"early stop at iteration {iteration}: {since} evaluations without improvement "
            f"(patience={patience}); best.pt is iteration {best_iteration}")
