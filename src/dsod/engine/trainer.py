"""Training from scratch: the iteration-based loop of the original solver (spec §1.9), with gradient
accumulation, AMP/bf16, non-finite-loss guard, periodic validation, a results folder per run, exact
resume and DDP under torchrun.

An *iteration* is one optimizer step over ``batch x accumulate x world_size`` images (the original:
4 per GPU x 8 GPUs x iter_size 4 = 128).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ModelConfig, get_config
from ..loss import MultiBoxLoss
from ..model import DSOD, build_model
from ..model.layers import convert_sync_batchnorm
from ..postprocess import PostProcessor
from . import distributed as dist_utils
from .checkpoint import (config_from_dict, load_checkpoint, model_payload, rng_state,
                         save_checkpoint, set_rng_state)
from .evaluate import autocast_context, run_evaluation
from .optim import build_optimizer, lr_lambda
from .numerics import decide_numerics
from .precise_bn import has_batchnorm, load_bn_buffers, recompute_bn_stats
from .sampler import ResumableBatchSampler


class TrainingError(Exception):
    """A user-facing training failure (one line)."""


PRECISE_BN_IMAGES = 256  # docs/RESULTS.md "BN statistics": enough for the estimate to stop moving


def precise_bn_images(value: Any) -> int:
    """Normalise a ``precise_bn`` setting to a number of images (0: off)."""
    low = str(value).strip().lower()
    if low in ("auto", "true", "yes", "on"):
        return PRECISE_BN_IMAGES
    if low in ("false", "no", "off", "none", "0"):
        return 0
    try:
        n = int(low)
    except ValueError:
        n = -1
    if n < 0:
        raise TrainingError(f"precise_bn={value} is not valid; use auto, false or a number of images")
    return n


@dataclass
class TrainArgs:
    """Every ``dsod train`` key. Defaults follow the paper's recipe (spec §1.9) where it applies."""

    data: Optional[str] = None  # dataset YAML / VOC root / COCO JSON; None: the synthetic demo set
    model: str = "dsod300"  # preset name, or a .pt checkpoint to start from (like weights=)
    weights: Optional[str] = None  # initial weights (fresh schedule); heads re-initialised on class mismatch
    resume: Optional[str] = None  # last.pt of an interrupted run: continue exactly
    epochs: int = 100
    iterations: Optional[int] = None  # optimizer steps; overrides epochs
    batch: int = 16  # images per process per forward pass
    accumulate: int = 1  # forward passes per optimizer step (the original: iter_size 4)
    imgsz: Optional[int] = None  # input size; default: the preset's
    lr: Optional[float] = None  # default: 0.1 x effective batch / 128 (the paper's 0.1 at 128)
    optimizer: str = "sgd"  # sgd (the paper's) | adamw (faster to converge on tiny CPU runs)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # ssd: the SSD augmentation (spec §1.8; True means this) | light: milder, for short CPU runs on small
    # data (data.transforms.train_transform) | none (or False): warp-resize only (overfitting checks)
    augment: Any = "ssd"
    flipud: float = 0.0  # probability of a vertical flip too (micrographs, aerial images)
    no_decay_norm: bool = False  # exempt BN/GN/L2Norm parameters from weight decay
    schedule: str = "multistep"  # multistep (the paper's) | cosine
    milestones: Tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # 20k/40k/60k/80k of 100k
    warmup: Optional[int] = None  # warm-up iterations; default min(500, 5% of the run)
    norm: str = "bn"  # bn | gn | syncbn (syncbn: statistics over all processes under DDP)
    # BN running-average decay; default: the model's (Caffe's 0.999). Short runs want less (e.g. 0.99):
    # the bias-corrected average then forgets the first iterations' very different statistics.
    bn_decay: Optional[float] = None
    # Re-estimate the BN statistics for the current weights on this many augmented training images
    # before every evaluation and every best.pt/last.pt written with it (engine/precise_bn.py);
    # "auto": PRECISE_BN_IMAGES; 0 or false: off (the running average is saved as is).
    precise_bn: Any = "auto"
    amp: bool = True  # float16 autocast + GradScaler on CUDA (ignored on CPU)
    # bfloat16 autocast; None: on CPUs with native bf16 (AMX, AVX512-BF16), engine/numerics.py
    bf16: Optional[bool] = None
    channels_last: Optional[bool] = None  # None: where it measured faster (engine/numerics.py)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    max_bad_steps: int = 10  # abort after this many non-finite losses in a row
    workers: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    project: str = "runs"
    name: str = "train"
    exist_ok: bool = False
    val_interval: Optional[int] = None  # iterations between evaluations; default: ~10 per run
    save_interval: Optional[int] = None  # iterations between last.pt writes; default: min(50, val_interval)
    val: bool = True
    plots: bool = True
    progress: bool = True
    cache_dir: str = "~/.cache/dsod"  # where the synthetic demo set is written
    max_images: Optional[int] = None  # use only the first N images of each split (quick experiments)
    # Stop (saving last.pt) once this iteration is reached, without changing the schedule: lets a
    # long run be split across time-boxed sessions and resumed with resume=.../last.pt.
    stop_at: Optional[int] = None


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        _, local_rank, world = dist_utils.env_world()
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank if world > 1 else 0)
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise TrainingError(f"device={spec} is not valid; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device={spec}: CUDA is not available on this machine; use device=cpu")
    return dev


def next_run_dir(project: str, name: str, exist_ok: bool) -> Path:
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    i = 2
    while (Path(project) / f"{name}{i}").exists():
        i += 1
    return Path(project) / f"{name}{i}"


class _Interrupted(Exception):
    pass


class Trainer:
    def __init__(self, args: TrainArgs):
        self.args = args
        self.device = select_device(args.device)
        self.rank, self.world = dist_utils.init(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        self._setup()

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from ..data import DetectionDataset, augment_mode, eval_transform, load_dataset, train_transform

        a = self.args
        if a.batch < 1 or a.accumulate < 1:
            raise TrainingError("batch and accumulate must be >= 1")
        try:
            a.augment = augment_mode(a.augment)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        if not 0.0 <= a.flipud <= 1.0:
            raise TrainingError(f"flipud={a.flipud} must be a probability between 0 and 1")
        self.resume_ckpt = load_checkpoint(a.resume) if a.resume else None
        if self.resume_ckpt is not None:
            saved = self.resume_ckpt.get("train_args") or {}
            # resume continues the saved run: its arguments win except where to look for files
            keep = {"resume", "device", "workers", "progress", "stop_at"}
            for k, v in saved.items():
                if k not in keep and hasattr(a, k):
                    setattr(a, k, tuple(v) if isinstance(v, list) else v)
        torch.manual_seed(a.seed)

        data = a.data
        if data is None:
            from ..synthetic import make_synthetic_voc
            data = str(make_synthetic_voc(Path(a.cache_dir).expanduser()))
        self.dataset_spec = load_dataset(data)
        self.info = self.dataset_spec.info
        train_records = self.dataset_spec.records("train")
        if a.max_images:
            train_records = train_records[: a.max_images]
        if not train_records:
            raise TrainingError(f"data={data}: the train split has no usable images")
        self.val_records = self.dataset_spec.records("val") if "val" in self.dataset_spec.splits else []
        if a.max_images:
            self.val_records = self.val_records[: a.max_images]

        # model
        cfg, init_state = self._model_config()
        self.cfg = cfg
        model = build_model(cfg)
        if init_state is not None:
            self._load_initial_weights(model, init_state)
        if a.norm == "syncbn" and self.world > 1:
            model = convert_sync_batchnorm(model)
        self.numerics = decide_numerics(self.device, a.amp, a.bf16, a.channels_last)
        self.memory_format = torch.channels_last if self.numerics.channels_last else torch.contiguous_format
        self.model: DSOD = model.to(self.device, memory_format=self.memory_format)
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        # data
        size = cfg.image_size
        # keys are (index, sample seed): DetectionDataset seeds the augmentation with the seed
        self.train_set = DetectionDataset(train_records, train_transform(size, mode=a.augment, flipud=a.flipud),
                                          train=True)
        self.sampler = ResumableBatchSampler(len(self.train_set), a.batch, shuffle=True, seed=a.seed,
                                             rank=self.rank, world=self.world, drop_last=True)
        self.train_loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=a.workers,
                                       collate_fn=_collate, pin_memory=self.device.type == "cuda",
                                       persistent_workers=False)
        self.val_loader = None
        if a.val and self.val_records and self.main:
            val_set = DetectionDataset(self.val_records, eval_transform(size), train=False)
            self.val_loader = DataLoader(val_set, batch_size=max(1, a.batch), shuffle=False,
                                         num_workers=a.workers, collate_fn=_collate)

        # schedule
        per_epoch = self.sampler.batches_per_epoch() // a.accumulate
        if per_epoch < 1:
            raise TrainingError(f"batch={a.batch} x accumulate={a.accumulate} x {self.world} process(es) is larger "
                                f"than the {len(train_records)} training images")
        self.iters_per_epoch = per_epoch
        self.total_iters = a.iterations or a.epochs * per_epoch
        eff = a.batch * a.accumulate * self.world
        self.effective_batch = eff
        self.lr = a.lr if a.lr is not None else 0.1 * eff / 128
        warmup = a.warmup if a.warmup is not None else min(500, self.total_iters // 20)
        if a.optimizer not in ("sgd", "adamw"):
            raise TrainingError(f"optimizer={a.optimizer} is not valid; choose one of: sgd, adamw")
        self.optimizer = build_optimizer(self.model, a.optimizer, self.lr, a.momentum, a.weight_decay,
                                         a.no_decay_norm)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_iters, warmup, a.schedule, a.milestones))
        self.use_amp = self.numerics.amp
        self.use_bf16 = self.numerics.bf16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.criterion = MultiBoxLoss(variances=cfg.anchors.variances)
        self.postprocessor = PostProcessor(variances=cfg.anchors.variances)
        self.val_interval = a.val_interval or max(1, math.ceil(self.total_iters / 10))
        self.precise_images = precise_bn_images(a.precise_bn) if has_batchnorm(self.model) else 0
        self.save_interval = a.save_interval or max(1, min(50, self.val_interval))

        # state
        self.iteration = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.best_fitness = -1.0
        self.bad_steps = 0
        self.skipped_steps = 0
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
            self.run_dir = Path(a.resume).resolve().parent.parent
        else:
            self.run_dir = next_run_dir(a.project, a.name, a.exist_ok)
        if self.main:
            (self.run_dir / "weights").mkdir(parents=True, exist_ok=True)
            from .memory import active_allocator
            _write_yaml(self.run_dir / "args.yaml", {**_args_dict(a), "data_resolved": data,
                                                      "effective_batch": eff, "lr_resolved": self.lr,
                                                      "total_iterations": self.total_iters,
                                                      "world_size": self.world, "numerics": self.numerics.describe(),
                                                      "threads": torch.get_num_threads(),
                                                      "allocator": active_allocator()})
            if a.progress:
                print(self.numerics.describe(), flush=True)

    def _model_config(self) -> Tuple[ModelConfig, Optional[Dict[str, Any]]]:
        a = self.args
        num_classes = len(self.info.names) + 1
        if self.resume_ckpt is not None:
            return config_from_dict(self.resume_ckpt["model_config"]), None
        init = None
        if a.model.endswith(".pt"):
            init = load_checkpoint(a.model)
            cfg = config_from_dict(init["model_config"])
        else:
            try:
                cfg = get_config(a.model)
            except ValueError as e:
                raise TrainingError(str(e)) from None
        if a.weights:
            init = load_checkpoint(a.weights)
        overrides: Dict[str, Any] = {"num_classes": num_classes}
        if a.imgsz:
            overrides["image_size"] = a.imgsz
        if a.norm == "gn":
            overrides["norm"] = "gn"
        if a.bn_decay is not None:
            overrides["bn_decay"] = a.bn_decay
        return cfg.replace(**overrides), init

    def _load_initial_weights(self, model: DSOD, ckpt: Dict[str, Any]) -> None:
        state = ckpt["model"]
        own = model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            if self.main:
                tqdm.write(f"warning: {len(mismatched)} tensors differ in shape (class count "
                           f"{len(ckpt.get('names') or [])} -> {len(self.info.names)}); re-initialising the "
                           "detection heads")
            state = {k: v for k, v in state.items() if k not in mismatched}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if self.main and (set(missing) - set(mismatched) or unexpected):
            tqdm.write(f"warning: weights do not match the model exactly ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected tensors)")

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("train_bn"):  # "model" holds re-estimated BN statistics; training continues on its own
            load_bn_buffers(self.model, ckpt["train_bn"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.history = list(ckpt.get("history") or [])
        self.best_fitness = float(ckpt.get("best_fitness", -1.0))
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, metrics: Optional[Dict[str, Any]] = None,
                 train_bn: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, Any]:
        p = model_payload(self.model, self.cfg, self.info.names, self.info.category_ids, metrics)
        p.update({
            # which BN statistics "model" holds; "train_bn": the training run's own (for resume)
            "bn_stats": f"precise ({self.precise_images} training images)" if train_bn is not None else "running",
            "train_bn": train_bn,
            "train_args": _args_dict(self.args), "iteration": self.iteration, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.use_amp else None,
            "rng": rng_state(), "history": self.history, "best_fitness": self.best_fitness,
            "dataset_format": self.info.format, "world_size": self.world,
        })
        return p

    def save_last(self, metrics: Optional[Dict[str, Any]] = None, precise: bool = False) -> None:
        """Write last.pt; ``precise``: with BN statistics re-estimated for these weights (every rank
        must call it then). Periodic crash-safety saves and Ctrl-C keep the running average."""
        train_bn = self._precise_bn() if precise else None
        try:
            if self.main:
                save_checkpoint(self.run_dir / "weights" / "last.pt", self._payload(metrics, train_bn))
        finally:
            if train_bn is not None:
                load_bn_buffers(self.model, train_bn)

    # ------------------------------------------------------------------ precise BN
    def _precise_batches(self, num_batches: int):
        """``num_batches`` augmented training batches, drawn as in training but from a stream of their
        own (seeded by the iteration), so the training data order is untouched."""
        a = self.args
        sampler = ResumableBatchSampler(len(self.train_set), a.batch, shuffle=True,
                                        seed=(a.seed + 1) * 1_000_003 + self.iteration, rank=self.rank,
                                        world=self.world, drop_last=True)
        loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=a.workers, collate_fn=_collate)
        done, epoch = 0, 0
        while done < num_batches:
            sampler.set_epoch(epoch)
            epoch += 1
            for images, _ in loader:
                yield images
                done += 1
                if done == num_batches:
                    return

    def _precise_bn(self) -> Optional[Dict[str, torch.Tensor]]:
        """Re-estimate the BN statistics (all ranks); returns the training buffers to put back."""
        if not self.precise_images:
            return None
        num_batches = max(1, math.ceil(self.precise_images / (self.args.batch * self.world)))
        t0 = time.time()
        previous = recompute_bn_stats(self.model, self._precise_batches(num_batches), self.device,
                                      autocast_context(self.device, self.use_amp, self.use_bf16))
        self.precise_seconds = getattr(self, "precise_seconds", 0.0) + time.time() - t0
        return previous

    # ------------------------------------------------------------------ loop
    def _batches(self):
        """Endless stream of (images, targets), resuming inside an epoch where the state says."""
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            for batch in self.train_loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _global_num_pos(self, targets) -> Optional[torch.Tensor]:
        if self.world == 1:
            return None
        # Normalise by the positives of the whole global batch so that N processes x batch b equal
        # 1 process x batch N*b (Caffe normalised per GPU; results then depend on the GPU count).
        pos = torch.tensor([0.0], device=self.device)
        with torch.no_grad():
            cls, _, _ = self.criterion.build_targets(targets, self.model.anchors_cxcywh)
            pos += (cls > 0).sum()
        return dist_utils.all_reduce_sum(pos)

    def train(self) -> Dict[str, Any]:
        a = self.args
        net = self.ddp or self.model
        net.train()
        stream = self._batches()
        interrupted = {"flag": False}

        def on_signal(signum, frame):  # SIGTERM (kill) behaves like Ctrl-C: stop, save, exit
            interrupted["flag"] = True
            raise _Interrupted()

        old_term = signal.signal(signal.SIGTERM, on_signal) if _in_main_thread() else None
        bar = tqdm(total=self.total_iters, initial=self.iteration, disable=not (self.main and a.progress),
                   dynamic_ncols=True, desc=f"train {self.cfg.name}")
        t_start = time.time()
        window: List[float] = []
        metrics: Dict[str, Any] = {}
        try:
            stop = min(self.total_iters, a.stop_at or self.total_iters)
            while self.iteration < stop:
                t0 = time.time()
                parts = self._step(net, stream)
                self.iteration += 1
                window.append(self.effective_batch / max(1e-9, time.time() - t0))
                window = window[-20:]
                if parts is not None:
                    bar.set_postfix(loss=f"{parts['loss']:.3f}", loc=f"{parts['loss_loc']:.3f}",
                                    conf=f"{parts['loss_conf']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{sorted(window)[len(window) // 2]:.1f}", refresh=False)
                    self._running = parts
                bar.update(1)
                last = self.iteration == self.total_iters
                if self.iteration % self.val_interval == 0 or last:
                    metrics = self._evaluate_and_log(time.time() - t_start)
                elif self.iteration == stop:
                    self.save_last(precise=True)
                elif self.iteration % self.save_interval == 0:
                    self.save_last()
        except (KeyboardInterrupt, _Interrupted):
            bar.close()
            self.save_last()
            dist_utils.cleanup()
            if self.main:
                print(f"\ninterrupted at iteration {self.iteration}/{self.total_iters}; resume with "
                      f"resume={self.run_dir / 'weights' / 'last.pt'}")
            raise KeyboardInterrupt from None
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        bar.close()
        if self.main and a.plots:
            from .plots import plot_results
            plot_results(self.run_dir / "results.csv", self.run_dir / "results.png")
        dist_utils.barrier()
        return {"run_dir": str(self.run_dir), "metrics": metrics, "iterations": self.iteration,
                "skipped_steps": self.skipped_steps, "seconds": time.time() - t_start}

    def _step(self, net, stream) -> Optional[Dict[str, float]]:
        a = self.args
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "loss_loc": 0.0, "loss_conf": 0.0}
        finite = True
        for micro in range(a.accumulate):
            images, targets = next(stream)
            if self.iteration == 0 and micro == 0 and self.main and a.plots and self.resume_ckpt is None:
                from .plots import plot_batch
                plot_batch(images, targets, self.info.names, self.run_dir / "train_batch0.jpg")
            # pinned host memory on CUDA (the loader's pin_memory): the copies overlap the compute
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = [{k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                       for t in targets]
            with autocast_context(self.device, self.use_amp, self.use_bf16):
                out = net(images)
            global_pos = self._global_num_pos(targets)
            parts = self.criterion(out.bbox_regression.float(), out.cls_logits.float(), targets,
                                   self.model.anchors_cxcywh)
            loss = parts["loss"]
            if global_pos is not None:  # see _global_num_pos
                loss = loss * parts["num_pos"].clamp(min=1) / global_pos.clamp(min=1) * self.world
            loss = loss / a.accumulate
            if not torch.isfinite(loss):
                finite = False
                break
            self.scaler.scale(loss).backward()
            for k in sums:
                sums[k] += float(parts[k].detach()) / a.accumulate
        if self.world > 1:  # every process must agree on skipping, or DDP would hang
            flag = dist_utils.all_reduce_sum(torch.tensor([0.0 if finite else 1.0], device=self.device))
            finite = bool(flag.item() == 0)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.skipped_steps += 1
            if self.main:
                tqdm.write(f"warning: non-finite loss at iteration {self.iteration}; step skipped "
                           f"({self.bad_steps} in a row, {self.skipped_steps} in total)")
            if self.bad_steps >= a.max_bad_steps:
                raise TrainingError(f"the loss was NaN/inf for {self.bad_steps} iterations in a row at iteration "
                                    f"{self.iteration}; lower lr (now {self.lr:g}), enable grad_clip, or check the data")
            self.scheduler.step()
            return None
        self.bad_steps = 0
        if a.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return sums

    def _evaluate_and_log(self, elapsed: float) -> Dict[str, Any]:
        row: Dict[str, Any] = {"iteration": self.iteration, "epoch": round(self.iteration / self.iters_per_epoch, 3),
                               "lr": self.optimizer.param_groups[0]["lr"], "time_s": round(elapsed, 1)}
        run = getattr(self, "_running", None) or {}
        row.update({k: round(v, 5) for k, v in run.items()})
        metrics: Dict[str, Any] = {}
        train_bn = self._precise_bn()
        try:
            self._evaluate_and_save(row, metrics, train_bn)
        finally:
            if train_bn is not None:  # training continues with its own running average
                load_bn_buffers(self.model, train_bn)
        dist_utils.barrier()
        return metrics

    def _evaluate_and_save(self, row: Dict[str, Any], metrics: Dict[str, Any],
                           train_bn: Optional[Dict[str, torch.Tensor]]) -> None:
        if self.main and self.val_loader is not None:
            from ..metrics import Evaluator
            evaluator = Evaluator(self.info, self.val_records)
            metrics.update(run_evaluation(self.model, self.val_loader, evaluator, self.device, self.postprocessor,
                                          amp=self.use_amp, bf16=self.use_bf16, progress=self.args.progress))
            row["voc07_map50"] = round(float(metrics.get("voc07_map50", float("nan"))), 5)
            row["voc_area_map50"] = round(float(metrics.get("voc_area_map50", float("nan"))), 5)
            row["coco_ap"] = round(float(metrics.get("coco", {}).get("AP", float("nan"))), 5)
        if self.main:
            self.history.append(row)
            _append_csv(self.run_dir / "results.csv", row)
            fitness = self._fitness(row)
            is_best = fitness > self.best_fitness
            if is_best:
                self.best_fitness = fitness
            summary = {k: row[k] for k in ("voc07_map50", "voc_area_map50", "coco_ap") if k in row}
            payload = self._payload({**summary, "iteration": self.iteration}, train_bn)
            save_checkpoint(self.run_dir / "weights" / "last.pt", payload)
            if is_best:
                save_checkpoint(self.run_dir / "weights" / "best.pt", payload)
            if self.args.progress and "voc07_map50" in row:
                tqdm.write(f"iter {self.iteration}: mAP@0.5 (VOC07 11-point) {row['voc07_map50']:.4f}  "
                           f"COCO AP {row['coco_ap']:.4f}")
            if self.args.plots and self.val_loader is not None and self.iteration == self.total_iters:
                from .plots import plot_predictions
                plot_predictions(self.model, self.val_loader, self.postprocessor, self.info.names,
                                 self.run_dir / "val_predictions.jpg", self.device)

    def _fitness(self, row: Dict[str, Any]) -> float:
        key = "coco_ap" if self.info.format == "coco" else "voc07_map50"
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return -float(row.get("loss", 0.0))  # no validation: lower training loss is better
        return float(v)


def _collate(batch):
    from ..data import collate
    return collate(batch)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _args_dict(a: TrainArgs) -> Dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(a).items()}


def _write_yaml(path: Path, data: Dict[str, Any]) -> None:
    import yaml
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def _append_csv(path: Path, row: Dict[str, Any]) -> None:
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    rows.append({k: str(v) for k, v in row.items()})
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    write_csv(path, rows, keys)


def write_csv(path: Path, rows: List[Dict[str, Any]], keys: List[str]) -> None:
    """Write ``rows`` as CSV through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def train(**kwargs) -> Dict[str, Any]:
    """Python API: ``dsod.engine.trainer.train(data="bccd.yaml", model="dsod-tiny", epochs=10)``."""
    return Trainer(TrainArgs(**kwargs)).train()
