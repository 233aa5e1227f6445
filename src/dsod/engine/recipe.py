"""``recipe=auto``: the training settings chosen from the run's length.

Two recipes, both measured (docs/RESULTS.md "How `recipe=auto` chooses"):

- ``paper``: the original solver (ORIGINAL.md §1.9): SGD momentum 0.9, lr 0.1 at an effective batch of 128
  (scaled linearly), weight decay 5e-4 on everything but the heads' BN, multistep x0.1 at 20/40/60/80%
  of the run, the full SSD augmentation, Caffe's BN decay 0.999. Made for 100k iterations on 8 GPUs.
- ``short``: what measured best for runs of a few hundred to a few thousand iterations on CPU: AdamW
  5e-3, weight decay 0.05 off the norms, cosine, the light augmentation, BN decay 0.99, and an EMA of
  the weights. On BCCD (650 iterations at batch 16) the paper's recipe reached ~0.11 VOC07 mAP after
  1,000 iterations against 0.86-0.87 for this one; on chess_rf100 see docs/RESULTS.md.

``auto`` picks ``short`` below ``SHORT_RUN_ITERATIONS`` optimizer steps and ``paper`` above: the
paper's schedule needs its tens of thousands of steps (its lr only drops at 20%), and its heavy
augmentation pays off only when the network has time to fit it. Every key given explicitly wins over
the recipe's value.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

# "a few thousand iterations or less": the longest short run measured is 1,300 (BCCD); the paper's
# recipe has not been measured below 100k on real data, so the switch sits well above the former.
SHORT_RUN_ITERATIONS = 10_000


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str
    lr: Optional[float]  # None: 0.1 x effective batch / 128 (the paper's linear rule)
    weight_decay: float
    no_decay_norm: bool
    schedule: str
    augment: str
    bn_decay: Optional[float]  # None: the model's (Caffe's 0.999)
    ema: bool

    def values(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


PAPER = Recipe("paper", optimizer="sgd", lr=None, weight_decay=5e-4, no_decay_norm=False, schedule="multistep",
               augment="ssd", bn_decay=None, ema=False)
SHORT = Recipe("short", optimizer="adamw", lr=5e-3, weight_decay=0.05, no_decay_norm=True, schedule="cosine",
               augment="light", bn_decay=0.99, ema=True)
RECIPES = {"paper": PAPER, "short": SHORT}


def choose(recipe: str, iterations: int) -> Tuple[Recipe, str]:
    """The recipe for a run of ``iterations`` optimizer steps, and why."""
    if recipe in RECIPES:
        return RECIPES[recipe], f"recipe={recipe}"
    if recipe != "auto":
        raise ValueError(f"recipe={recipe} is not valid; choose one of: auto, {', '.join(RECIPES)}")
    if iterations < SHORT_RUN_ITERATIONS:
        return SHORT, f"{iterations} iterations < {SHORT_RUN_ITERATIONS:,}"
    return PAPER, f"{iterations} iterations >= {SHORT_RUN_ITERATIONS:,}"


def apply(args: Any, recipe: Recipe) -> Tuple[Any, Dict[str, Any]]:
    """``args`` with every recipe key the user left unset (None) filled in; also the filled values."""
    filled = {k: v for k, v in recipe.values().items()
              if hasattr(args, k) and getattr(args, k) is None and v is not None}
    return dataclasses.replace(args, recipe=recipe.name, **filled), filled


def describe(recipe: Recipe, reason: str, args: Any, filled: Dict[str, Any]) -> str:
    kept = [k for k in recipe.values() if hasattr(args, k) and k not in filled and getattr(args, k) is not None
            and getattr(args, k) != getattr(recipe, k)]
    own = f"; your {', '.join(f'{k}={getattr(args, k)}' for k in kept)} kept" if kept else ""
    return (f"recipe: {recipe.name} ({reason}): {recipe.optimizer}, {recipe.schedule}, augment={recipe.augment}, "
            f"ema={'on' if recipe.ema else 'off'}{own}; recipe=paper|short or any key overrides")
