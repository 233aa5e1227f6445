"""``backend=auto``: the fastest way to run a checkpoint on this machine that loses no accuracy.

The rules (measured per CPU kind, docs/PERFORMANCE.md "Choosing a backend"):

- a CUDA device: PyTorch on it (``torch``);
- no ``onnxruntime`` installed: the fused PyTorch path (``fused``; BN folded, channels-last);
- ONNX Runtime int8 (``onnxruntime-int8``) when the int8 export's measured VOC07 mAP@0.5 change on
  the dataset's val split is within ``INT8_MAX_LOSS_POINTS`` and int8 pays on this CPU: always with
  int8 dot products (VNNI, AMX: ~4-5x eager); without them (AVX2, 7-bit weights) only when it timed
  ``INT8_MIN_SPEEDUP`` x faster than the fastest fp32 engine here (2.0x OpenVINO fp32 on DSOD300 on an
  AMD EPYC Zen 3, no faster on a Zen 1);
- otherwise the fastest fp32 engine on the exported file, timed here (``timed_speeds``, once per
  checkpoint and CPU): ONNX Runtime (``onnxruntime``) or, where it is installed, OpenVINO
  (``openvino``); which one wins depends on the model (DSOD300: OpenVINO 1.36x on the Zen 3; a small
  224-px cpu-dsod: ONNX Runtime 1.07x).

The ONNX files are cached beside the checkpoint (``best.pt`` -> ``best.onnx``, ``best-int8.onnx``, the
names ``dsod export`` writes) and rebuilt when their recorded ``checkpoint_sha256`` no longer matches
the checkpoint; where that folder is not writable, in ``~/.cache/dsod/onnx``. The int8 file is built
(once, with its accuracy check) when the checkpoint's dataset is at hand. The choice is one line:
``BackendChoice.describe()``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from ..errors import DsodError

BACKENDS = ("auto", "torch", "fused", "onnxruntime", "onnxruntime-int8", "openvino")


class BackendError(DsodError, ValueError):
    """A backend that cannot run here, or a model file it cannot take (one line)."""


@dataclass(frozen=True)
class BackendChoice:
    name: str  # torch | fused | onnxruntime | onnxruntime-int8
    device: torch.device
    reason: str
    path: Optional[Path] = None  # the ONNX file for the onnxruntime backends

    def describe(self) -> str:
        where = f" {self.path}" if self.path else ""
        return f"backend: {self.name}{where} ({self.reason}; override with backend={'|'.join(BACKENDS[1:])})"


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def jemalloc_preloaded() -> bool:
    """This process runs on a preloaded jemalloc (``dsod train``/``dsod demo`` re-exec themselves so,
    src/dsod/launch.py): OpenVINO 2026.4's ``compile_model`` aborts there ("munmap_chunk(): invalid
    pointer", reproduced with the demo's checkpoint), so such a process does not use it."""
    return "jemalloc" in os.environ.get("LD_PRELOAD", "")


def openvino_available() -> bool:
    if jemalloc_preloaded():
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_paths(checkpoint: Path, digest: str):
    """(fp32, int8) ONNX paths for a checkpoint: beside it, or in the user cache when not writable."""
    folder = checkpoint.parent
    if not os.access(folder, os.W_OK):
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dsod" / "onnx"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{checkpoint.stem}-{digest[:12]}"
    else:
        stem = checkpoint.stem
    return folder / f"{stem}.onnx", folder / f"{stem}-int8.onnx"


def onnx_metadata(path: Path) -> dict:
    """The metadata of an ONNX file ({} when it is missing or unreadable)."""
    if not path.is_file():
        return {}
    try:
        from .sessions import read_metadata

        return read_metadata(path)
    except Exception:  # a damaged or foreign file: rebuilt like a stale one
        return {}


def ensure_fp32(checkpoint: Path, digest: str, log=print) -> Path:
    """The checkpoint's fp32 ONNX file, exported and verified if missing or stale."""
    fp32, _ = cache_paths(checkpoint, digest)
    if onnx_metadata(fp32).get("checkpoint_sha256") == digest:
        return fp32
    from ..export import DEFAULTS, export_main

    log(f"exporting {fp32} for backend=onnxruntime (once per checkpoint; {checkpoint.name} "
        f"{'changed' if fp32.exists() else 'has no export yet'})")
    export_main({**DEFAULTS, "model": str(checkpoint), "out": str(fp32), "verify_n": 4})
    return fp32


def ensure_int8(checkpoint: Path, digest: str, data: Optional[str] = None, log=print) -> Optional[Path]:
    """The checkpoint's int8 file with its measured accuracy, built if missing or stale and a dataset is
    at hand (``data``, or the one the checkpoint was trained on); None when it cannot be measured."""
    fp32, int8 = cache_paths(checkpoint, digest)
    meta = onnx_metadata(int8)
    if meta.get("checkpoint_sha256") == digest and "map_change" in meta:
        return int8
    from ..export import DEFAULTS
    from ..export.main import export_int8, resolve_dataset
    from ..model.checkpoint import load_checkpoint

    spec = resolve_dataset(data, load_checkpoint(checkpoint))
    if spec is None or "val" not in spec.splits or "train" not in spec.splits:
        return None
    fp32 = ensure_fp32(checkpoint, digest, log)
    log(f"building {int8} and measuring its mAP on {spec.root} val (once per checkpoint)")
    export_int8(fp32, {**DEFAULTS, "model": str(checkpoint)}, spec, int(onnx_metadata(fp32)["image_size"]))
    return int8


# what timed_speeds times: one image to detections at dsod val's score (the network, then the one
# selection, dsod.inference.postprocess.selection); a remembered figure of another measure is retimed
MEASURE = "detect-prefix@0.01"
INT8_MIN_SPEEDUP = 1.15  # without int8 dot products: int8 must be this much faster than fp32 to be served
ENGINES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnxruntime-int8": "onnxruntime"}


def timed_speeds(files: Dict[str, Path], runs: int = 5) -> Dict[str, float]:
    """Batch-1 latency (ms) of each backend -> file here, one thread each, interleaved, the best of
    ``runs`` after a warm-up (the minimum: what the engine can do, least spoilt by other load on a
    shared machine). Measured once per (checkpoint, CPU, backends) and remembered beside the
    files in ``<stem>.speed.json`` (written atomically): which engine is fastest depends on the model
    as much as on the CPU (OpenVINO fp32 ran DSOD300 1.36x ONNX Runtime on the Zen 3, but a small
    224-px cpu-dsod 7% slower; int8 was no faster than fp32 on a Zen 1 and 2-3x on a Zen 3)."""
    from ..files import atomic_write_text
    from ..runtime.hardware import cpu_id
    from .postprocess.detection_output import PostProcessor
    from .runners import OrtRunner

    fp32 = files["onnxruntime"]
    cache = fp32.with_name(fp32.stem + ".speed.json")
    key, digest = cpu_id(), onnx_metadata(fp32).get("checkpoint_sha256")
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    entry = table.get(key) or {}
    if entry.get("checkpoint_sha256") == digest and entry.get("measure") == MEASURE \
            and set(files) <= set(entry.get("ms", {})):
        return {k: entry["ms"][k] for k in files}
    runners = {k: OrtRunner(f, threads=1, engine=ENGINES[k]) for k, f in files.items()}
    size = int(runners["onnxruntime"].metadata.get("image_size") or 300)
    x, post = torch.zeros(1, 3, size, size), PostProcessor()
    times: Dict[str, list] = {k: [] for k in files}
    for i in range(runs + 1):
        for k, runner in runners.items():
            t0 = time.perf_counter()
            post.select(*runner(x), [(size, size)])  # what is served: the network and the selection
            if i:
                times[k].append(time.perf_counter() - t0)
    ms = {k: round(1000 * min(v), 2) for k, v in times.items()}
    table[key] = {"checkpoint_sha256": digest, "cpu": key, "measure": MEASURE, "ms": ms}
    try:
        atomic_write_text(cache, json.dumps(table, indent=1))
    except OSError:
        pass  # a read-only folder: measured again next time
    return ms


def fastest(ms: Dict[str, float]) -> Tuple[str, str, Optional[float]]:
    """The rule on timed backends (``ms``: backend -> latency at batch 1, fp32 engines and maybe
    ``onnxruntime-int8``): (the one served, the fastest fp32 engine, int8's speed-up over it or None).
    Without int8 dot products int8 is served only when ``INT8_MIN_SPEEDUP`` x faster."""
    best = min((k for k in ms if k != "onnxruntime-int8"), key=ms.get)
    if "onnxruntime-int8" not in ms:
        return best, best, None
    ratio = ms[best] / ms["onnxruntime-int8"]
    return ("onnxruntime-int8" if ratio >= INT8_MIN_SPEEDUP else best), best, ratio


def choose_backend(model: Union[str, Path], requested: str = "auto", device: str = "auto",
                   data: Optional[str] = None, log=print) -> BackendChoice:
    """Which backend runs ``model`` (a checkpoint .pt, or an exported .onnx) and why."""
    from ..export import INT8_MAX_LOSS_POINTS, checkpoint_sha256, has_int8_dot
    from ..runtime.device import select_device

    if requested not in BACKENDS:
        raise BackendError(f"backend={requested}: valid: {', '.join(BACKENDS)}")
    path = Path(str(model)).expanduser()
    if not path.is_file():
        raise BackendError(f"model={model}: file not found")
    dev = select_device(device)
    if requested == "openvino" and not openvino_available():
        raise BackendError("backend=openvino cannot run in a process on a preloaded jemalloc (it aborts there)"
                           if jemalloc_preloaded() else "backend=openvino needs openvino (pip install openvino)")
    if path.suffix == ".onnx":
        if requested not in ("auto", "onnxruntime", "onnxruntime-int8", "openvino"):
            raise BackendError(f"model={path.name} is an ONNX file: backend={requested} needs a checkpoint .pt")
        if requested == "openvino":
            return BackendChoice("openvino", torch.device("cpu"), "the ONNX file given, as asked", path)
        if not onnxruntime_available():
            raise BackendError("an .onnx model needs onnxruntime (pip install onnxruntime)")
        int8 = "quantization" in onnx_metadata(path)
        return BackendChoice("onnxruntime-int8" if int8 else "onnxruntime", torch.device("cpu"),
                             "the ONNX file given", path)
    if requested in ("torch", "fused"):
        if requested == "fused" and dev.type != "cpu":
            raise BackendError("backend=fused is the CPU fast path; use backend=torch on a GPU")
        return BackendChoice(requested, dev, "as asked")
    if dev.type == "cuda":
        if requested != "auto":
            raise BackendError(f"backend={requested} runs on the CPU; device={device} is a GPU")
        return BackendChoice("torch", dev, f"CUDA {torch.cuda.get_device_name(dev)}")
    if not onnxruntime_available():
        if requested != "auto":
            raise BackendError(f"backend={requested} needs onnxruntime (pip install onnxruntime)")
        return BackendChoice("fused", dev, "onnxruntime is not installed (pip install onnxruntime: about 2x faster)")
    digest = checkpoint_sha256(path)
    if requested in ("onnxruntime", "openvino"):
        return BackendChoice(requested, dev, "as asked", ensure_fp32(path, digest, log))
    int8 = ensure_int8(path, digest, data, log)
    meta = onnx_metadata(int8) if int8 else {}
    if requested == "onnxruntime-int8":
        if int8 is None:
            raise BackendError(f"backend=onnxruntime-int8: no dataset to calibrate and check it on (give data=, "
                               f"or `dsod export model={path} int8=true data=DATASET`)")
        return BackendChoice("onnxruntime-int8", dev, "as asked", int8)
    fp32 = ensure_fp32(path, digest, log)
    files = {"onnxruntime": fp32, **({"openvino": fp32} if openvino_available() else {})}
    if int8 is None:
        why = "int8 not measured: no dataset at hand (data=DATASET measures it once)"
    elif meta["map_change"] < -INT8_MAX_LOSS_POINTS:
        why = f"int8 lost {-meta['map_change']:.2f} mAP points (more than {INT8_MAX_LOSS_POINTS})"
    else:
        accuracy = f"int8 measured {meta['map_change']:+.2f} mAP points ({meta.get('weight_bits', '?')}-bit weights)"
        if has_int8_dot():
            return BackendChoice("onnxruntime-int8", dev, f"int8 dot products on this CPU; {accuracy}", int8)
        files["onnxruntime-int8"] = int8
        why = ""
    if len(files) == 1:
        return BackendChoice("onnxruntime", dev, f"ONNX Runtime fp32; {why}", fp32)
    ms = timed_speeds(files)
    served, best, ratio = fastest(ms)
    timing = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1]))
    if served == "onnxruntime-int8":
        return BackendChoice("onnxruntime-int8", dev, f"no int8 dot products, but int8 measured "
                             f"{ratio:.2f}x {best} fp32 here ({timing} at batch 1); {accuracy}", int8)
    if ratio is not None:
        why = f"int8 only {ratio:.2f}x fp32 here (no int8 dot products)"
    return BackendChoice(best, dev, f"fastest fp32 measured here ({timing} at batch 1); {why}", fp32)


def open_runner(choice: BackendChoice, model=None, threads: Optional[int] = None):
    """The runner (``dsod.inference.runners``) for a choice; ``model``: the loaded checkpoint model (torch/fused)."""
    from .runners import OrtRunner, TorchRunner

    if choice.name in ("torch", "fused"):
        return TorchRunner(model, choice.device, fused=choice.name == "fused")
    return OrtRunner(choice.path, threads=threads, engine="openvino" if choice.name == "openvino" else "onnxruntime")
