"""Training from scratch: the iteration-based loop of the original solver (docs/ORIGINAL.md §1.9), with
gradient accumulation, AMP/bf16, a non-finite-loss guard, validation with BN statistics re-estimated for
the weights evaluated, EMA, a time budget, early stopping, a results folder, exact resume and DDP.

The loop and its decisions live here; the pieces are modules of their own: ``setup`` (arguments,
data, model config, recipe, run folder), ``loaders`` (the seeded data streams), ``step`` (one
optimizer step), ``train_state`` (checkpoints, exact resume), ``budget`` (time=), ``precise_bn``,
``ema``, ``evaluate``, ``signals`` (SIGTERM as Ctrl-C).

An *iteration* is one optimizer step over ``batch x accumulate x world_size`` images (the original:
4 per GPU x 8 GPUs x iter_size 4 = 128)."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from ..data import DetectionDataset, eval_loader, train_transform
from ..families import build
from ..model import DSOD
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.norms import convert_sync_batchnorm
from ..runtime import distributed as dist_utils
from ..runtime.device import select_device
from ..runtime.numerics import decide_numerics
from . import setup
from .budget import Budget, parse_duration
from .ema import ModelEMA
from .evaluate import (
    autocast_context,
    evaluation_line,
    fitness,
    keep_better_bn,
    metric_columns,
    patience_reason,
    run_evaluation,
)
from .loaders import side_batches, side_seed, train_loader
from .optim import build_schedule, default_lr, default_warmup, lr_lambda
from .precise_bn import has_batchnorm, load_bn_buffers, recompute_bn_stats
from .recipe import SHORT
from .run import TrainingError, append_csv, next_run_dir, write_yaml
from .signals import Interrupted, sigterm_interrupts
from .step import NonFiniteGuard, detection_loss, train_step
from .train_args import TrainArgs, precise_bn_images
from .train_state import restore_training, run_record, training_payload


class Trainer:
    def __init__(self, args: TrainArgs):
        self.t_start = time.time()  # a time= budget counts from here: set-up and the speed probe included
        self.args = args
        self.device = select_device(args.device)
        self.rank, self.world = dist_utils.init(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        self.notes: List[str] = []  # the lines that say what was decided for the user
        self.time_offset = 0.0  # results.csv's time_s before a resume
        self._setup()

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """Resume state, arguments, data and the model on its device, then the rest in order."""
        self.resume_ckpt = load_checkpoint(self.args.resume) if self.args.resume else None
        a = self.args = setup.resolve_args(self.args, self.resume_ckpt, self.notes)
        self.budget_seconds = parse_duration(a.time) if a.iterations is None else None
        torch.manual_seed(a.seed)
        data = setup.load_data(a)
        self.data_resolved, self.dataset_spec, self.info, self.data_problems = (data.resolved, data.spec,
                                                                               data.spec.info, data.problems)
        train_records, self.val_records = data.train, data.val
        if data.val_images is not None:  # in args.yaml and checkpoints: a rerun holds out the same images
            a = self.args = dataclasses.replace(a, val_images=data.val_images)
            self.notes.append(data.spec.derived_val_note)

        cfg, init_state, self.anchor_fit = setup.model_config(a, self.info, train_records, self.resume_ckpt,
                                                              self.notes)
        self.cfg = cfg
        model, self.criterion, self.postprocessor = build(cfg)
        if init_state is not None:
            setup.load_initial_weights(model, init_state, self.info.names, log=self.main)
        if a.norm == "syncbn" and self.world > 1:
            model = convert_sync_batchnorm(model)
        self.numerics = decide_numerics(self.device, a.amp, a.bf16, a.channels_last)
        self.use_amp, self.use_bf16 = self.numerics.amp, self.numerics.bf16
        self.model, self.ddp, self.memory_format = setup.place_model(model, self.device, self.numerics, self.world)
        self._setup_data(train_records)
        self._setup_length()
        self._setup_optimizer_and_state()

    def _setup_data(self, train_records) -> None:
        """The training stream and the validation loader (the augmentation is set once the recipe is known)."""
        a, cfg = self.args, self.cfg
        # keys are (index, sample seed): DetectionDataset seeds the augmentation with the seed
        self.train_set = DetectionDataset(train_records, None, train=True)
        self._set_augment(a.augment or SHORT.augment)
        self.train_loader = train_loader(self.train_set, a.batch, seed=a.seed, rank=self.rank, world=self.world,
                                         workers=a.workers, pin_memory=self.device.type == "cuda")
        self.sampler = self.train_loader.batch_sampler
        self.val_loader = (eval_loader(self.val_records, cfg.image_size, a.batch, a.workers)
                           if a.val and self.val_records and self.main else None)
        per_epoch = self.sampler.batches_per_epoch() // a.accumulate
        if per_epoch < 1:
            raise TrainingError(f"batch={a.batch} x accumulate={a.accumulate} x {self.world} process(es) is larger "
                                f"than the {len(train_records)} training images")
        self.iters_per_epoch = per_epoch
        self.effective_batch = a.batch * a.accumulate * self.world
        self.precise_images = precise_bn_images(a.precise_bn) if has_batchnorm(self.model) else 0

        self.iteration, self.epoch, self.batch_in_epoch = 0, 0, 0

    def _setup_length(self) -> None:
        """The run's length (iterations, epochs or a time budget), then the recipe that suits it."""
        a, per_epoch = self.args, self.iters_per_epoch
        self.budget: Optional[Budget] = None
        if self.resume_ckpt is not None:
            self.total_iters = int(self.resume_ckpt.get("total_iters") or a.iterations or a.epochs * per_epoch)
        elif self.budget_seconds is not None:
            self.budget = setup.plan_budget(self, self.budget_seconds)
            self.total_iters = self.budget.total_iters
        else:
            self.total_iters = a.iterations or a.epochs * per_epoch
        if self.resume_ckpt is None:
            a, note = setup.apply_recipe(a, self.total_iters)
            self.args = a
            self.notes.append(note)
        self._set_augment(a.augment)
        if a.bn_decay is not None:
            self.cfg = self.cfg.replace(bn_decay=a.bn_decay)
            setup.set_bn_decay(self.model, a.bn_decay)
        self.ema = ModelEMA.for_run(self.model, self.total_iters) if a.ema else None

    def _setup_optimizer_and_state(self) -> None:
        """Optimizer, schedule, evaluation cadence, the state a resume restores, the run folder."""
        a = self.args
        self.lr = a.lr if a.lr is not None else default_lr(self.effective_batch)
        self.warmup = a.warmup if a.warmup is not None else default_warmup(self.total_iters)
        try:
            self.optimizer, self.scheduler = build_schedule(self.model, a, self.lr, self.warmup,
                                                            self.total_iters)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.val_interval = (self.budget.val_interval if self.budget is not None
                             else a.val_interval or max(1, math.ceil(self.total_iters / 10)))
        self.save_interval = a.save_interval or max(1, min(50, self.val_interval))

        # state
        self.history: List[Dict[str, Any]] = []
        self.best_fitness, self.best_iteration = -1.0, 0
        self.guard, self.stop_reason = NonFiniteGuard(a.max_bad_steps), ""
        if self.resume_ckpt is not None:
            restore_training(self, self.resume_ckpt)
            self.run_dir = Path(a.resume).resolve().parent.parent
        else:
            self.run_dir = next_run_dir(a.project, a.name, a.exist_ok)
        self.lock = setup.open_run_folder(self.run_dir, self.notes, self.data_problems) if self.main else None
        if self.main:
            write_yaml(self.run_dir / "args.yaml", run_record(self))
            if a.progress:
                for line in [self.numerics.describe(), *self.notes]:
                    print(line, flush=True)

    def _set_augment(self, mode: str) -> None:
        self.train_set.transform = train_transform(self.cfg.image_size, mode=mode, flipud=self.args.flipud)

    def _loss_on(self, net, images, targets) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return detection_loss(net, self.model, self.criterion, images, targets, self.device, self.memory_format,
                              autocast_context(self.device, self.use_amp, self.use_bf16), self.world)

    # ------------------------------------------------------------------ checkpoints
    @property
    def eval_model(self) -> DSOD:
        """The weights evaluated and saved: the EMA's when on."""
        return self.ema.module if self.ema is not None else self.model

    def save_last(self, metrics: Optional[Dict[str, Any]] = None, precise: bool = False) -> None:
        """Write last.pt; ``precise``: with BN statistics re-estimated for these weights (every rank
        must call it then). Periodic crash-safety saves and Ctrl-C keep the running average."""
        train_bn = self._precise_bn() if precise else None
        try:
            if self.main:
                save_checkpoint(self.run_dir / "weights" / "last.pt",
                                training_payload(self, metrics, train_bn))
        finally:
            if train_bn is not None:
                load_bn_buffers(self.eval_model, train_bn)

    # ------------------------------------------------------------------ precise BN
    def _extra_batches(self, num_batches: int, targets: bool = False, stream: int = 0, workers: Optional[int] = None):
        """Augmented training batches from a stream of their own (the training order is untouched; the
        images and their augmentation depend on the stream's keys, not on ``workers``)."""
        a = self.args
        return side_batches(self.train_set, a.batch, num_batches, seed=side_seed(a.seed, self.iteration, stream),
                            rank=self.rank, world=self.world, workers=a.workers if workers is None else workers,
                            targets=targets)

    def _precise_bn(self) -> Optional[Dict[str, torch.Tensor]]:
        """Re-estimate the evaluated weights' BN statistics (all ranks); returns the buffers to put back."""
        if not self.precise_images:
            return None
        num_batches = max(1, math.ceil(self.precise_images / (self.args.batch * self.world)))
        t0 = time.time()
        # loaded in this process: for the 2 batches of the default, starting the loader's worker
        # processes cost more than the loading they would overlap (docs/RESULTS.md, precise BN cost)
        previous = recompute_bn_stats(self.eval_model, self._extra_batches(num_batches, workers=0), self.device,
                                      autocast_context(self.device, self.use_amp, self.use_bf16))
        self.precise_seconds = getattr(self, "precise_seconds", 0.0) + time.time() - t0
        return previous

    # ------------------------------------------------------------------ loop
    def _batches(self):
        """Endless stream of (images, targets), resuming inside an epoch where the state says."""
        first = self.iteration == 0 and self.main and self.args.plots and self.resume_ckpt is None
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            for batch in self.train_loader:
                if first:  # what the network sees, as Ultralytics' train_batch0.jpg
                    from .plots import plot_batch
                    plot_batch(*batch, self.info.names, self.run_dir / "train_batch0.jpg")
                    first = False
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _replan(self, step_seconds: float, eval_seconds: float) -> None:
        """time=: re-plan with what was measured; the schedule stretches to the new length, warm-up kept."""
        b = self.budget
        b.observe(self.iteration, time.time() - self.t_start, step_seconds, eval_seconds)
        total, interval = dist_utils.from_main([b.total_iters, b.val_interval], self.device)
        self.total_iters, self.val_interval = max(self.iteration + 1, int(total)), max(1, int(interval))
        fn = lr_lambda(self.total_iters, self.warmup, self.args.schedule, self.args.milestones)
        self.scheduler.lr_lambdas = [fn] * len(self.optimizer.param_groups)
        if self.main and self.args.progress:
            tqdm.write(f"time budget: {step_seconds:.2f} s per iteration, {eval_seconds:.0f} s per evaluation "
                       f"measured -> {self.total_iters} iterations")

    def _check_time(self) -> None:
        behind = self.budget.behind(time.time() - self.t_start)
        if dist_utils.from_main([1.0 if behind else 0.0], self.device)[0] and self.iteration < self.total_iters:
            self.stop_reason = f"time budget: ending at iteration {self.iteration} with the final evaluation"
            self.total_iters = self.iteration  # the run ends here: evaluated as its last iteration

    def _loop(self, bar) -> Dict[str, Any]:
        """Iterations until the end, the budget, patience or ``stop_at``; the last evaluation's metrics."""
        a = self.args
        net = self.ddp or self.model
        net.train()
        stream = self._batches()
        t_loop = time.time()
        window: List[float] = []
        metrics: Dict[str, Any] = {}
        step_time, steps_timed = 0.0, 0  # since the last evaluation, for the time budget
        last_eval = self.history[-1]["iteration"] if self.history else 0
        while self.iteration < min(self.total_iters, a.stop_at or self.total_iters):
            t0 = time.time()
            parts = self._step(net, stream)
            if self.ema is not None:
                self.ema.update(self.model)
            self.iteration += 1
            dt = time.time() - t0
            step_time, steps_timed = step_time + dt, steps_timed + 1
            window = (window + [self.effective_batch / max(1e-9, dt)])[-20:]
            if parts is not None:
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{parts['loss']:.3f}", loc=f"{parts['loss_loc']:.3f}",
                                conf=f"{parts['loss_conf']:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{sorted(window)[len(window) // 2]:.1f}", refresh=False)
                self._running = parts
            bar.update(1)
            if self.budget is not None:
                self._check_time()
            if self.iteration - last_eval >= self.val_interval or self.iteration == self.total_iters:
                t_eval = time.time()
                metrics = self._evaluate_and_log(time.time() - t_loop)
                last_eval = self.iteration
                if self.budget is not None and self.iteration < self.total_iters:
                    self._replan(step_time / max(1, steps_timed), time.time() - t_eval)
                    step_time, steps_timed = 0.0, 0
                    bar.total = self.total_iters
                if self._out_of_patience():
                    break
            elif self.iteration == a.stop_at:
                self.save_last(precise=True)
            elif self.iteration % self.save_interval == 0:
                self.save_last()
        return metrics

    def train(self) -> Dict[str, Any]:
        a = self.args
        bar = tqdm(total=self.total_iters, initial=self.iteration, disable=not (self.main and a.progress),
                   dynamic_ncols=True, desc=f"train {self.cfg.name}")
        try:
            with sigterm_interrupts():
                metrics = self._loop(bar)
        except (KeyboardInterrupt, Interrupted):
            bar.close()
            self.save_last()
            dist_utils.cleanup()
            if self.main:
                print(f"\ninterrupted at iteration {self.iteration}/{self.total_iters}; resume with "
                      f"resume={self.run_dir / 'weights' / 'last.pt'}")
            raise KeyboardInterrupt from None
        bar.close()
        if self.main and self.stop_reason and a.progress:
            print(self.stop_reason, flush=True)
        if self.main and self.budget is not None:  # args.yaml: the plan as it ended
            write_yaml(self.run_dir / "args.yaml", run_record(self))
        if self.main and a.plots:
            from .plots import plot_results
            plot_results(self.run_dir / "results.csv", self.run_dir / "results.png")
        dist_utils.barrier()
        if self.lock is not None:
            self.lock.release()
        return {"run_dir": str(self.run_dir), "metrics": metrics, "iterations": self.iteration, "stop_reason":
                self.stop_reason, "skipped_steps": self.guard.total, "seconds": time.time() - self.t_start}

    def _out_of_patience(self) -> bool:
        if not self.args.patience or self.iteration >= self.total_iters:
            return False
        reason = patience_reason(self.history, self.best_iteration, self.args.patience, self.iteration)
        stop = dist_utils.from_main([1.0 if reason else 0.0], self.device)[0] > 0
        if stop:
            self.stop_reason = reason
            self.save_last(precise=True)  # the run ends here: last.pt gets its weights' BN statistics
        return stop

    def _step(self, net, stream) -> Optional[Dict[str, float]]:
        a = self.args
        parts = train_step(stream, lambda images, targets: self._loss_on(net, images, targets), self.optimizer,
                           self.scaler, accumulate=a.accumulate, world=self.world, device=self.device,
                           params=self.model.parameters(), grad_clip=a.grad_clip)
        self.scheduler.step()
        self.guard(parts is not None, self.iteration, self.lr, tqdm.write if self.main else (lambda m: None))
        return parts

    def _evaluate_and_log(self, elapsed: float) -> Dict[str, Any]:
        row: Dict[str, Any] = {"iteration": self.iteration, "epoch": round(self.iteration / self.iters_per_epoch, 3),
                               "lr": self.optimizer.param_groups[0]["lr"],
                               "time_s": round(elapsed + self.time_offset, 1)}
        run = getattr(self, "_running", None) or {}
        row.update({k: round(v, 5) for k, v in run.items()})
        metrics: Dict[str, Any] = {}
        t0 = time.time()
        train_bn = self._precise_bn()
        if train_bn is not None:  # what the re-estimation costs next to the evaluation (val_s), per row
            row["precise_bn_s"] = round(time.time() - t0, 2)
        try:
            self._evaluate_and_save(row, metrics, train_bn)
        finally:
            if train_bn is not None:  # training continues with its own running average
                load_bn_buffers(self.eval_model, train_bn)
        dist_utils.barrier()
        return metrics

    def _score(self) -> Dict[str, Any]:
        from ..metrics import Evaluator
        return run_evaluation(self.eval_model, self.val_loader, Evaluator(self.info, self.val_records), self.device,
                              self.postprocessor, amp=self.use_amp, bf16=self.use_bf16, progress=self.args.progress)

    def _evaluate_and_save(self, row: Dict[str, Any], metrics: Dict[str, Any],
                           train_bn: Optional[Dict[str, torch.Tensor]]) -> None:
        if self.main and self.val_loader is not None:
            t0 = time.time()
            metrics.update(self._score())
            row.update(metric_columns(metrics))
            if train_bn is not None and self.iteration == self.total_iters:
                train_bn = keep_better_bn(self.eval_model, train_bn, row, metrics, self._score, self.info.format)
            row["bn_stats"] = "running" if train_bn is None else "precise"
            row["val_s"] = round(time.time() - t0, 2)  # the final row's holds both scorings
        if self.main:
            self.history.append(row)
            append_csv(self.run_dir / "results.csv", row)
            fitness_now = fitness(row, self.info.format)
            is_best = fitness_now > self.best_fitness
            if is_best:
                self.best_fitness, self.best_iteration = fitness_now, self.iteration
            summary = {k: row[k] for k in ("voc07_map50", "voc_area_map50", "coco_ap") if k in row}
            payload = training_payload(self, {**summary, "iteration": self.iteration}, train_bn)
            save_checkpoint(self.run_dir / "weights" / "last.pt", payload)
            if is_best:
                save_checkpoint(self.run_dir / "weights" / "best.pt", payload)
            if self.args.progress and "voc07_map50" in row:
                tqdm.write(evaluation_line(row, self.info.format))
            if self.args.plots and self.val_loader is not None and self.iteration == self.total_iters:
                from .plots import plot_predictions
                plot_predictions(self.eval_model, self.val_loader, self.postprocessor, self.info.names,
                                 self.run_dir / "val_predictions.jpg", self.device)


def train(**kwargs) -> Dict[str, Any]:
    """Python API: ``dsod.engine.trainer.train(data="bccd.yaml", model="dsod-tiny", time="30m")``."""
    return Trainer(TrainArgs(**kwargs)).train()
