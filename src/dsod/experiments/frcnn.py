"""The paper's proposal-based comparison (ORIGINAL.md §3.2: Faster R-CNN and R-FCN "failed to converge" from
scratch with VGG, ResNet and DS/64-192-48-1 backbones), at CPU scale.

torchvision's ``FasterRCNN`` (RPN + RoIAlign + two-FC box head; written by torchvision, not by us)
around the very same randomly initialised DSOD backbone as the proposal-free run it is compared with,
trained through the same code as the DSOD runs (sampler, training step, optimizer, schedule, BN decay,
weight EMA, precise BN, iteration budget) and scored by the same ``Evaluator``. What is ours: the
adapter from our backbone to the single feature map torchvision wants, and the short loop that calls
those pieces, because the detector computes its own losses.

Sizes are scaled to the small input: anchors 16-128 px (BCCD platelets to WBCs at 224 px), a 256-wide
box head and 128 sampled RoIs per image instead of 1024 / 512, so that one step costs about what a
DSOD step costs (torchvision's defaults cost ~20x more on this CPU).
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List

import torch
from torch import nn

from ..config import ModelConfig
from ..data import DetectionDataset, eval_loader, train_transform
from ..engine.ema import ModelEMA
from ..engine.loaders import side_batches, side_seed, train_loader
from ..engine.optim import build_optimizer, lr_lambda
from ..engine.precise_bn import load_bn_buffers, recompute_bn_stats
from ..engine.step import train_step
from ..engine.train_args import precise_bn_images
from ..metrics import Evaluator
from ..metrics.loop import evaluate
from ..model import build_backbone


class _StrideSixteen(nn.Module):
    """DSOD backbone -> ``{"0": last output}`` (stride 16), the one map RoIAlign pools from."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.body = build_backbone(cfg.replace(prediction="plain"))  # plain: no 'learned half' width
        self.out_channels = self.body.out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"0": self.body(x)[2]}


def build_faster_rcnn(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """``num_classes`` counts background (torchvision's convention, also ours)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = _StrideSixteen(cfg)
    size = cfg.image_size
    return FasterRCNN(
        backbone, min_size=size, max_size=size,
        # the inputs are already DSOD's (BGR minus the mean, ORIGINAL.md §1.1): no second normalisation
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=AnchorGenerator(((16, 32, 64, 128),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(backbone.out_channels * 49, 256), box_predictor=FastRCNNPredictor(256, num_classes),
        box_batch_size_per_image=128, box_score_thresh=0.01, box_detections_per_img=200)


def torchvision_targets(targets: List[Dict[str, Any]], size: int) -> List[Dict[str, torch.Tensor]]:
    # dataset: boxes normalised to [0, 1], labels 0-based; torchvision: pixels, 0 = background
    return [{"boxes": t["boxes"] * size, "labels": t["labels"] + 1} for t in targets]


def frcnn_detector(model: nn.Module, size: int):
    """torchvision's Faster R-CNN as the detector ``dsod.metrics.loop.evaluate`` takes: boxes from its
    ``size`` x ``size`` input to original pixels, labels back to 0-based."""
    @torch.no_grad()
    def detect(images, sizes):
        dets = []
        for o, (h, w) in zip(model(list(images)), sizes):
            scale = torch.tensor([w / size, h / size, w / size, h / size])
            dets.append({"boxes": o["boxes"] * scale, "scores": o["scores"], "labels": o["labels"] - 1})
        return dets
    return detect


def evaluate_frcnn(model: nn.Module, loader, evaluator: Evaluator, size: int) -> Dict[str, Any]:
    """The one evaluation loop (``dsod.metrics.loop``) over the Faster R-CNN arm."""
    model.eval()
    try:
        return evaluate(frcnn_detector(model, size), loader, evaluator, progress=False)
    finally:
        model.train()


def _loss_fn(model: nn.Module, size: int):
    """``engine.step.train_step``'s loss: torchvision's four losses, summed (its own normalisation),
    with the box terms (RPN + head) as ``loss_loc`` and the objectness + classifier as ``loss_conf``."""
    def loss(images, targets):
        parts = model(list(images), torchvision_targets(targets, size))
        loc = parts["loss_box_reg"] + parts["loss_rpn_box_reg"]
        conf = parts["loss_classifier"] + parts["loss_objectness"]
        return loc + conf, {"loss": loc + conf, "loss_loc": loc, "loss_conf": conf}
    return loss


def _stream(loader):
    while True:  # each pass over the loader is the next epoch
        yield from loader


def train_faster_rcnn(spec, cfg: ModelConfig, *, iterations: int, batch: int, lr: float, weight_decay: float,
                      warmup: int, augment: str, flipud: float, bn_decay: float, ema: bool, precise_bn,
                      seed: int, val_every: int, log=print) -> Dict[str, Any]:
    """Train from scratch and evaluate on the ``val`` split with the pieces the DSOD trainer uses:
    its sampler and side streams (``engine.loaders``), its step (``engine.step.train_step``: a
    non-finite loss skips the step), optimizer, schedule, BN decay, weight EMA (evaluated) and
    precise BN before every evaluation. Returns the metrics of the last evaluation, the learning
    curve and the wall time (the same keys ``ablation`` reads from DSOD runs)."""
    torch.manual_seed(seed)
    info = spec.info
    size = cfg.image_size
    model = build_faster_rcnn(cfg.replace(bn_decay=bn_decay), len(info.names) + 1)
    train_set = DetectionDataset(spec.records("train"), train_transform(size, mode=augment, flipud=flipud))
    val_records = spec.records("val")
    val_loader = eval_loader(val_records, size, batch)
    batches = _stream(train_loader(train_set, batch, seed=seed))
    opt = build_optimizer(model, "adamw", lr, 0.9, weight_decay, no_decay_norm=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(iterations, warmup, "cosine", ()))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    averaged = ModelEMA.for_run(model, iterations) if ema else None
    precise_images = precise_bn_images(precise_bn)
    curve, metrics, t0, bad = [], {}, time.time(), 0
    step_loss = _loss_fn(model, size)
    model.train()
    for it in range(1, iterations + 1):
        parts = train_step(batches, step_loss, opt, scaler, accumulate=1, world=1, device=torch.device("cpu"))
        sched.step()
        if parts is None:
            bad += 1  # counted and reported (a diverging run is a result here, not an error)
        else:
            last = parts
        if averaged is not None:
            averaged.update(model)
        if it % val_every == 0 or it == iterations:
            evaluated = averaged.module if averaged is not None else model
            # BN lives in the backbone only; the detector's transform leaves a size x size input as it is
            body = evaluated.backbone
            saved = None
            if precise_images:
                n = max(1, math.ceil(precise_images / batch))
                saved = recompute_bn_stats(body, side_batches(train_set, batch, n, seed=side_seed(seed, it)),
                                           torch.device("cpu"))
            metrics = evaluate_frcnn(evaluated, val_loader, Evaluator(info, val_records), size)
            if saved is not None:
                load_bn_buffers(body, saved)
            model.train()
            row = {"iteration": it, "loss": round(float(last["loss"]), 5) if bad < it else float("nan"),
                   "time_s": round(time.time() - t0, 1), "voc07_map50": round(float(metrics["voc07_map50"]), 5),
                   "coco_ap": round(float(metrics["coco"]["AP"]), 5), "non_finite_steps": bad}
            curve.append(row)
            log(f"faster-rcnn iter {it}: loss {row['loss']:.3f} mAP@0.5 {row['voc07_map50']:.4f}")
    params = sum(p.numel() for p in model.parameters())
    return {"metrics": metrics, "curve": curve, "seconds": time.time() - t0, "params": params}
