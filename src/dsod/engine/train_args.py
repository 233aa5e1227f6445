"""Every ``dsod train`` key (``TrainArgs``), shared by the trainer, the CLI's option table and the
Python API (``dsod.engine.trainer.train(**kwargs)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .run import TrainingError

# docs/RESULTS.md "BN statistics: running vs re-estimated": 32 images as good as 64 (within the spread
# of three draws) on seven checkpoints, mid-run and final, BCCD, chess and the demo; 64 as good as 256
# and 1,024. With one all_reduce and in-process loading (precise_bn.py, trainer.py) it costs 0.18-0.23x
# of an evaluation of BCCD's 87 val images in a 2-process run (AMD Zen 4).
PRECISE_BN_IMAGES = 32


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
    """Every ``dsod train`` key. ``None`` means "decided for you": by ``recipe`` (engine/recipe.py:
    the paper's solver for long runs, the short-run recipe otherwise), by the hardware (numerics) or
    by the data (default boxes, validation split). An explicit value always wins."""

    data: Optional[str] = None  # dataset YAML / VOC root / COCO JSON; None: the synthetic demo set
    model: str = "dsod300"  # preset name, or a .pt checkpoint to start from (like weights=)
    weights: Optional[str] = None  # initial weights (fresh schedule); heads re-initialised on class mismatch
    resume: Optional[str] = None  # last.pt of an interrupted run: continue exactly
    # wall-clock budget (30m, 2h, 1h30m; a bare number is hours): the run measures its speed and sets
    # its iteration count and evaluations to end within it (engine/budget.py); overrides epochs
    time: Optional[str] = None
    epochs: int = 100
    iterations: Optional[int] = None  # optimizer steps; overrides epochs and time
    # auto: "short" below recipe.SHORT_RUN_ITERATIONS iterations, else "paper" (engine/recipe.py)
    recipe: str = "auto"
    batch: int = 16  # images per process per forward pass
    accumulate: int = 1  # forward passes per optimizer step (the original: iter_size 4)
    imgsz: Optional[int] = None  # input size; default: the preset's
    lr: Optional[float] = None  # default: 0.1 x effective batch / 128 (the paper's 0.1 at 128)
    optimizer: Optional[str] = None  # sgd (the paper's) | adamw (faster to converge on short runs)
    momentum: float = 0.9
    weight_decay: Optional[float] = None  # paper: 5e-4; short: 0.05
    # ssd: the SSD augmentation (ORIGINAL.md §1.8; True means this) | light: milder, for short CPU runs
    # on small data (data.transforms.train_transform) | none (or False): warp-resize only (overfitting checks)
    augment: Any = None
    flipud: float = 0.0  # probability of a vertical flip too (micrographs, aerial images)
    no_decay_norm: Optional[bool] = None  # exempt BN/GN/L2Norm parameters from weight decay
    schedule: Optional[str] = None  # multistep (the paper's) | cosine
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
    # exponential moving average of the weights, evaluated and saved (engine/ema.py); None: the recipe's
    ema: Optional[bool] = None
    patience: Optional[int] = None  # stop after this many evaluations without improvement (best.pt kept)
    # auto: default boxes fitted to the training boxes (model/anchor_fit.py) when training a preset
    # on a dataset; preset: the preset's own
    anchors: str = "auto"
    # a dataset with a train split only: hold out this fraction, seeded, as the validation split
    # (seed 0, by file name, so runs with other training seeds are scored on the same images)
    val_fraction: float = 0.15
    val_images: Optional[list] = None  # the held-out images, written by the run itself (args.yaml)
    amp: bool = True  # float16 autocast + GradScaler on CUDA (ignored on CPU)
    # bfloat16 autocast; None: on CPUs with native bf16 (AMX, AVX512-BF16), runtime/numerics.py
    bf16: Optional[bool] = None
    channels_last: Optional[bool] = None  # None: where it measured faster (runtime/numerics.py)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    max_bad_steps: int = 10  # abort after this many non-finite losses in a row
    # refuse to train when problems dropped more than this share of the annotations (1: never)
    bad_data_limit: float = 0.5
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
