"""One way to get a model to run: a preset name or a checkpoint, optionally at another input size."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import ModelConfig
from ..errors import DsodError


class ModelSpecError(DsodError, ValueError):
    """``model=`` names neither a preset nor a checkpoint file (one line)."""


def load_model(spec: str, imgsz: Optional[int] = None) -> Tuple["object", ModelConfig]:
    """(model in eval mode, its ModelConfig) from a preset name or a ``.pt`` checkpoint; ``imgsz``
    rebuilds it at that input size with the same weights (the default boxes follow the size)."""
    model, cfg, _ = load_model_and_checkpoint(spec, imgsz)
    return model, cfg


def load_model_and_checkpoint(spec: str, imgsz: Optional[int] = None
                              ) -> Tuple["object", ModelConfig, Optional[Dict[str, Any]]]:
    """As ``load_model``, plus the checkpoint's contents (names, train_args, ...; None for a preset)."""
    from ..config import PRESETS
    from . import build_model

    p = Path(str(spec)).expanduser()
    ckpt = None
    if p.suffix == ".pt" or p.is_file():
        from .checkpoint import build_from_checkpoint, load_checkpoint

        ckpt = load_checkpoint(p)
        model, cfg = build_from_checkpoint(ckpt)
    elif str(spec) in PRESETS:
        model = build_model(str(spec))
        cfg = model.config
    else:
        raise ModelSpecError(f"model={spec}: not a preset nor a checkpoint file")
    if imgsz and int(imgsz) != cfg.image_size:
        resized = build_model(cfg.replace(image_size=int(imgsz)))
        resized.load_state_dict(model.state_dict())
        model, cfg = resized, resized.config
    return model.eval(), cfg, ckpt
