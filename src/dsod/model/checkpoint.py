"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

Contents: ``model`` (state dict), ``model_config`` (the ModelConfig as plain data), ``names``,
``category_ids`` (COCO id of each label, or None), ``image_size``, ``pixel_mean``, ``metrics``,
``versions`` (dsod, torch, torchvision, python), ``train_args``, and for resuming: ``iteration``,
``epoch``, ``batch_in_epoch``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``history``.
"""
from __future__ import annotations

import dataclasses
import platform
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torchvision

from ..config import PIXEL_MEAN_BGR, AnchorConfig, ModelConfig
from ..errors import DsodError
from ..files import atomic_path


class CheckpointError(DsodError):
    pass


LOADED_FROM = "loaded_from"  # the key load_checkpoint adds (not saved): the file a checkpoint came from


def config_to_dict(cfg: ModelConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


# Sane bounds on a checkpoint's config, checked before anything is built: a file that passes
# weights_only=True can still name a 100000-px input (tens of GB at the first forward).
_INT_BOUNDS = {"num_classes": (2, 100_000), "image_size": (16, 4096), "stem_channels": (1, 2048),
               "growth_rate": (1, 2048), "bottleneck_width": (1, 8192)}
_TUPLE_BOUNDS = {"block_config": (1, 8, 1, 256), "prediction_widths": (1, 12, 1, 8192)}  # len, values


def _check_config(d: Dict[str, Any]) -> None:
    for key, (lo, hi) in _INT_BOUNDS.items():
        v = d.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi):
            raise CheckpointError(f"model_config {key}={v!r} is outside {lo}..{hi}")
    for key, (n_lo, n_hi, lo, hi) in _TUPLE_BOUNDS.items():
        v = d.get(key)
        if v is not None and (not isinstance(v, (list, tuple)) or not n_lo <= len(v) <= n_hi
                              or not all(isinstance(x, int) and lo <= x <= hi for x in v)):
            raise CheckpointError(f"model_config {key}={v!r}: {n_lo}-{n_hi} integers in {lo}..{hi} expected")
    for key, hi in (("compression", 1.0), ("vgg_width", 16.0)):
        v = d.get(key)
        if v is not None and (not isinstance(v, (int, float)) or not 0 < v <= hi):
            raise CheckpointError(f"model_config {key}={v!r} is outside (0, {hi}]")


def config_from_dict(d: Dict[str, Any]) -> ModelConfig:
    """The ModelConfig a checkpoint describes, its fields checked against sane bounds first
    (``CheckpointError``, one line, for a value out of bounds or a malformed entry)."""
    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v

    if not isinstance(d, dict) or not isinstance(d.get("anchors"), dict):
        raise CheckpointError("model_config is malformed (no anchors entry)")
    _check_config(d)
    d = dict(d)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        anchors = AnchorConfig(**{k: tup(v) for k, v in d.pop("anchors").items()})
        return ModelConfig(anchors=anchors, **{k: tup(v) for k, v in d.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model_config is malformed ({str(e).splitlines()[0]})") from None


def load_weights(model: torch.nn.Module, state: Dict[str, Any], what: str = "model", source: str = "") -> None:
    """``model.load_state_dict(state)``; tensors that do not fit the config's network are one line."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines[1:] if ln.startswith(("size mismatch", "Missing", "Unexpected"))),
                     lines[0] if lines else type(e).__name__)
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}the checkpoint's {what} weights do not match its model_config "
                              f"({first[:200]})") from None


def versions() -> Dict[str, str]:
    from ..version import __version__
    return {"dsod": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: Dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill or Ctrl-C at any
    moment leaves either the previous file or the new one, never a truncated one."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str, map_location: Optional[str | torch.device] = "cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        text = str(e)
        if "Weights only load failed" in text and "GLOBAL" in text:
            # torch's paragraph suggests weights_only=False: never
            why = "it holds Python objects beyond tensors and plain data, which are never executed here"
        elif "Weights only load failed" in text or "invalid load key" in text or "zip archive" in text:
            why = "not a PyTorch checkpoint file (damaged, or another kind of file)"
        else:
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise CheckpointError(f"{path}: not a loadable dsod checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a dsod checkpoint (no model/model_config entries)")
    try:  # every field within bounds before anything is built from it
        config_from_dict(ckpt["model_config"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    ckpt[LOADED_FROM] = str(path)  # in memory only: names the file in later messages
    return ckpt


def model_payload(model: torch.nn.Module, cfg: ModelConfig, names, category_ids, metrics=None) -> Dict[str, Any]:
    """The self-describing part every checkpoint carries."""
    return {"model": model.state_dict(), "model_config": config_to_dict(cfg), "names": list(names),
            "category_ids": list(category_ids) if category_ids is not None else None,
            "image_size": cfg.image_size, "pixel_mean": list(PIXEL_MEAN_BGR), "metrics": dict(metrics or {}),
            "versions": versions()}


def build_from_checkpoint(ckpt: Dict[str, Any]):
    """Rebuild the model of a loaded checkpoint (eval mode); returns (model, ModelConfig)."""
    from . import build_model

    cfg = config_from_dict(ckpt["model_config"])
    model = build_model(cfg)
    load_weights(model, ckpt["model"], source=ckpt.get(LOADED_FROM, ""))
    return model.eval(), cfg
