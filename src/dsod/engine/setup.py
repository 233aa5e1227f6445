"""What a training run is made of before its first step: its arguments (a resumed run's own), its data
(with a held-out validation split where the dataset has none) and its network's configuration
(default boxes fitted to the data, starting weights). The trainer calls these once."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from ..config import ModelConfig, get_config
from ..files import FolderLock, atomic_write_text, remove_stale_temporaries
from ..model.checkpoint import config_from_dict, load_checkpoint
from ..runtime import distributed as dist_utils
from .budget import Budget, estimate_eval_seconds, parse_duration, probe_step_seconds
from .run import TrainingError
from .train_args import TrainArgs

# a resumed run continues with its own arguments, except where to look for files and how to show it
RESUME_KEEPS = {"resume", "device", "workers", "progress", "stop_at"}


def resolve_args(a: TrainArgs, resume_ckpt: Optional[Dict[str, Any]], notes: Optional[List[str]] = None) -> TrainArgs:
    """Checked arguments, a resumed run's own where it has them (a new object: ``a`` is not changed);
    the keys given with ``resume=`` that the run's own replace are said in ``notes``."""
    from ..data import augment_mode

    if a.batch < 1 or a.accumulate < 1:
        raise TrainingError("batch and accumulate must be >= 1")
    if not 0.0 <= a.flipud <= 1.0:
        raise TrainingError(f"flipud={a.flipud} must be a probability between 0 and 1")
    if a.anchors not in ("auto", "preset"):
        raise TrainingError(f"anchors={a.anchors} is not valid; use auto or preset")
    if resume_ckpt is not None:
        saved = resume_ckpt.get("train_args") or {}
        defaults = TrainArgs()
        ignored = [f"{k}={getattr(a, k)}" for k in saved if k not in RESUME_KEEPS and hasattr(a, k)
                   and getattr(a, k) != getattr(defaults, k) and _plain(getattr(a, k)) != _plain(saved[k])]
        if ignored and notes is not None:
            notes.append(f"resume: ignored {', '.join(ignored)} (a resumed run keeps its own arguments; "
                         f"start a new run with weights= to change them)")
        a = dataclasses.replace(a, **{k: (tuple(v) if isinstance(v, list) and k != "val_images" else v)
                                      for k, v in saved.items() if k not in RESUME_KEEPS and hasattr(a, k)})
    try:
        parse_duration(a.time)
        if a.augment is not None:
            a = dataclasses.replace(a, augment=augment_mode(a.augment))
    except ValueError as e:
        raise TrainingError(str(e)) from None
    return a


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


@dataclass
class RunData:
    resolved: str  # what data= became (the synthetic set's folder when it was None)
    spec: Any  # data.DatasetSpec
    train: list
    val: list
    val_images: Optional[List[str]]  # the held-out validation images of a train-only dataset
    problems: List[str]  # the data report every run prints and keeps (data_problems.txt)


def load_data(a: TrainArgs) -> RunData:
    from ..data import load_dataset
    from ..data.problems import check_trainable, split_problems

    data = a.data
    if data is None:
        from ..data.synthetic import make_synthetic_voc
        data = str(make_synthetic_voc(Path(a.cache_dir).expanduser()))
    try:
        # seed 0, not the training seed: runs with other seeds are scored on the same held-out images
        spec = load_dataset(data, val_fraction=a.val_fraction, seed=0, val_images=a.val_images)
    except ValueError as e:  # DatasetError: one line naming the file and the problem
        raise TrainingError(str(e)) from None
    full_train, full_val = spec.records("train"), (spec.records("val") if "val" in spec.splits else [])
    train, val = full_train[: a.max_images or None], full_val[: a.max_images or None]
    if not train:
        raise TrainingError(f"data={data}: the train split has no usable images")
    # the report and the verdict are on the whole splits (what the problems were counted over)
    report = [split_problems("train", full_train, spec.report("train"))]
    if "val" in spec.splits:
        report.append(split_problems("val", full_val, spec.report("val")))
    try:
        check_trainable(report[0], data, a.bad_data_limit)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    overlap = len({str(r.path) for r in train} & {str(r.path) for r in val})
    lines = [ln for p in report for ln in p.lines]
    if overlap:
        lines.append(f"warning: {overlap} image(s) are in both train and val: validation overstates accuracy")
    derived = list(spec.derived_val) if spec.derived_val is not None else None
    return RunData(data, spec, train, val, derived, lines)


def model_config(a: TrainArgs, info, train_records, resume_ckpt: Optional[Dict[str, Any]],
                 notes: List[str]) -> Tuple[ModelConfig, Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """(config, starting checkpoint or None, the default-box fit or None); the fit's line goes to ``notes``."""
    if resume_ckpt is not None:
        saved = list(resume_ckpt.get("names") or [])
        if saved != list(info.names):  # the data changed since: its head would get the wrong classes
            raise TrainingError(f"resume: the checkpoint was trained on {len(saved)} classes {saved}, but "
                                f"data={a.data} now has {len(info.names)} {list(info.names)}; resume with the "
                                f"data it was trained on, or start a new run from it with weights=")
        return config_from_dict(resume_ckpt["model_config"]), None, resume_ckpt.get("anchor_fit")
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
    overrides: Dict[str, Any] = {"num_classes": len(info.names) + 1}
    if a.imgsz:
        overrides["image_size"] = a.imgsz
    if a.norm == "gn":
        overrides["norm"] = "gn"
    if a.bn_decay is not None:
        overrides["bn_decay"] = a.bn_decay
    cfg = cfg.replace(**overrides)
    # default boxes fitted to the data for a network trained from its preset (a checkpoint's heads
    # were trained for its own boxes, so starting from one keeps them)
    if a.anchors != "auto" or init is not None:
        return cfg, init, None
    from ..data.check import normalised_boxes
    from ..model.anchor_fit import fit_anchors

    boxes = normalised_boxes(train_records)  # xyxy in [0, 1], crowd regions left out
    if len(boxes) == 0:
        return cfg, init, None
    fit = fit_anchors(cfg, torch.as_tensor(boxes, dtype=torch.float32))
    notes.append(fit.describe())
    return cfg.replace(anchors=fit.anchors), init, fit.as_dict()


def load_initial_weights(model: torch.nn.Module, ckpt: Dict[str, Any], names: List[str], log: bool) -> None:
    """``weights=``/``model=x.pt``: every tensor that fits; the heads re-initialised when the class
    count differs."""
    state = ckpt["model"]
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        if log:
            tqdm.write(f"warning: {len(mismatched)} tensors differ in shape (class count "
                       f"{len(ckpt.get('names') or [])} -> {len(names)}); re-initialising the detection heads")
        state = {k: v for k, v in state.items() if k not in mismatched}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if log and (set(missing) - set(mismatched) or unexpected):
        tqdm.write(f"warning: weights do not match the model exactly ({len(missing)} missing, "
                   f"{len(unexpected)} unexpected tensors)")


def apply_recipe(a: TrainArgs, total_iters: int) -> Tuple[TrainArgs, str]:
    """``recipe=auto|paper|short`` for a run of ``total_iters`` steps: the arguments with the recipe's
    values where the user gave none, and the line that says so."""
    from . import recipe as recipes

    try:
        recipe, reason = recipes.choose(a.recipe, total_iters)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    a, filled = recipes.apply(a, recipe)
    return a, recipes.describe(recipe, reason, a, filled)


def set_bn_decay(model: torch.nn.Module, decay: float) -> None:
    """Caffe BN's moving-average decay on every layer of a built model (``bn_decay=``, the recipe's)."""
    from ..model.norms import CaffeBatchNorm2d

    for m in model.modules():
        if isinstance(m, CaffeBatchNorm2d):
            m.decay = decay


def plan_budget(self, seconds: float):
    """The ``time=`` plan of trainer ``self``: time a few steps, estimate an evaluation from them, and
    plan the run (rank 0 decides)."""
    a = self.args
    batches = self._extra_batches(5, targets=True, stream=7)
    net = self.ddp or self.model
    step_s = probe_step_seconds(net, self.model, batches, self._loss_on, 4) * a.accumulate
    n_val = len(self.val_records) if (a.val and self.val_records) else 0
    eval_s = estimate_eval_seconds(step_s, a.batch * a.accumulate, n_val, self.precise_images, self.world)
    step_s, eval_s = dist_utils.from_main([step_s, eval_s], self.device)
    budget = Budget(seconds=seconds, step_seconds=step_s, eval_seconds=eval_s)
    budget.plan(0, time.time() - self.t_start)
    # every rank runs rank 0's plan (as in _replan): each process's own clock can give another
    # length, hence other evaluation iterations (a deadlock in precise BN, seen on coco128) and
    # another lr schedule per rank
    total, interval = dist_utils.from_main([budget.total_iters, budget.val_interval], self.device)
    budget.total_iters, budget.val_interval = int(total), int(interval)
    if a.val_interval:
        budget.val_interval = a.val_interval
    self.notes.append(budget.describe() + f"; per process {a.batch} images per step")
    return budget


def place_model(model, device: torch.device, numerics, world: int):
    """The model on its device in the run's memory format, and its DDP wrapper when ``world`` > 1."""
    memory_format = torch.channels_last if numerics.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else None
    return model, ddp, memory_format


def open_run_folder(run_dir: Path, notes: List[str], data_problems: List[str] = ()) -> FolderLock:
    """Take the run folder for this process (one writer per folder: a second run into it is refused
    with the holder's PID), remove the temporaries a run killed inside a save left in weights/, and
    say what reading the data found (printed, and kept as data_problems.txt)."""
    lock = FolderLock(run_dir, "training run")
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(run_dir / "weights"):
        notes.append(f"removed {stale.name}, left by a run killed while saving")
    if data_problems:
        print("\n".join(data_problems), flush=True)
        atomic_write_text(run_dir / "data_problems.txt", "\n".join(data_problems) + "\n")
    return lock
