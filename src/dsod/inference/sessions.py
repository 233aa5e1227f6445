"""ONNX Runtime and OpenVINO inference for models written by ``dsod export`` (the ``onnxruntime`` and
``openvino`` backends).

    from dsod.inference.sessions import OrtSession, OpenVinoSession
    det = OrtSession("best.onnx")                       # fp32 or the int8 "best-int8.onnx"
    det = OpenVinoSession("best.onnx")                   # the same file in OpenVINO's CPU plugin
    boxes, scores = det.predict(batch)                    # batch: (N, 3, S, S) float32, BGR minus mean

The full pipeline (preprocessing, post-processing, class names) is ``dsod.inference.predict.Detector``, which
runs these files through ``dsod.inference.runners.OrtRunner`` (``Detector.load("best.onnx")``).

The exported graph (``dsod.export``) takes ``images`` (N, 3, S, S) float32 BGR minus (104, 117, 123),
dynamic N, and outputs ``boxes`` (N, A, 4) xyxy normalised to [0, 1] of the input (default boxes baked
in) and ``scores`` (N, A, C) softmax probabilities without the background class; with ``nms=True`` a
third output ``selected`` (K, 3) int64 rows [image, class, box] from ONNX NonMaxSuppression.
Model metadata (``names``, ``image_size``, ``nms``, ...) is stored in the ONNX file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import DsodError


class ModelFileError(DsodError, ValueError):
    """An .onnx file that is missing, damaged or not a ``dsod export`` (one line)."""


def _opened(path: Path, engine: str, open_fn):
    """``open_fn()`` with any failure of the engine on a bad file as one ``ModelFileError`` line."""
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX model not found (write one with `dsod export`)")
    try:
        return open_fn()
    except Exception as e:  # noqa: BLE001 - the engines raise their own types for a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"{path}: not a loadable ONNX model ({engine}: {first[:160]})") from None


def _check_outputs(path: Path, names: List[str]) -> None:
    if not {"boxes", "scores"} <= set(names):
        raise ModelFileError(f"{path}: not a dsod export (outputs {names}; expected boxes and scores)")


class OrtSession:
    """An ONNX Runtime session around an exported DSOD.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
    """

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self.session = _opened(self.path, "onnxruntime", lambda: ort.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        _check_outputs(self.path, self.output_names)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: Dict[str, Any] = {k: _maybe_json(v) for k, v in meta.items()}
        shape = self.session.get_inputs()[0].shape
        self.image_size = int(self.metadata.get("image_size") or shape[-1])
        self.names: List[str] = list(self.metadata.get("names") or [])
        self.has_nms = "selected" in self.output_names

    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """All outputs by name for a preprocessed batch."""
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: network_batch(batch)})))

    def predict(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) float32 BGR minus mean -> boxes (N, A, 4) xyxy in [0, 1], scores (N, A, C)."""
        out = self.run(batch)
        return out["boxes"], out["scores"]


class OpenVinoSession:
    """The same exported file compiled by OpenVINO's CPU plugin (``pip install openvino``): it reads
    the ONNX graph directly (no conversion step) and picks its own kernels for the CPU it finds; on
    the AVX2 EPYC it ran DSOD300 fp32 ~1.4x faster than ONNX Runtime (docs/PERFORMANCE.md).

    Args:
        path: the .onnx file.
        threads: inference threads (None: OpenVINO's default, one per core).
    """

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None):
        import openvino as ov

        self.path = Path(path)
        config: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = _opened(self.path, "openvino", lambda: ov.Core().compile_model(str(self.path), "CPU", config))
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        _check_outputs(self.path, self.output_names)
        self.metadata: Dict[str, Any] = read_metadata(self.path)
        side = self.compiled.input(0).get_partial_shape()[-1]
        self.image_size = int(self.metadata.get("image_size") or side.get_length())
        self.names: List[str] = list(self.metadata.get("names") or [])
        self.has_nms = "selected" in self.output_names

    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """All outputs by name for a preprocessed batch."""
        out = self.request.infer({0: network_batch(batch)})
        # copies: the request's output buffers are reused by the next call
        return {name: np.array(out[port]) for name, port in zip(self.output_names, self.compiled.outputs)}

    def predict(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        out = self.run(batch)
        return out["boxes"], out["scores"]


def network_batch(batch: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) or one (3, S, S) image -> a contiguous float32 (N, 3, S, S) array."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    return batch[None] if batch.ndim == 3 else batch


def preprocess_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (3, size, size) float32 network input: ``dsod.data.preprocess.preprocess``
    (the one test-time preprocessing, also that of ``dsod val`` and ``dsod predict``) as an array."""
    from ..data.preprocess import preprocess

    return preprocess(rgb, size).numpy()


def list_images(source: Union[str, Path], limit: Optional[int] = None) -> List[Path]:
    """Image files of a file, a folder, a glob, or a VOC root (its JPEGImages), sorted."""
    from ..data.images import find_images

    files = find_images(source)
    return files[:limit] if limit else files


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """Upright RGB uint8, decoded as in training (``dsod.data.images.load_image``); a one-line
    ``ImageError`` for an unusable file."""
    from ..data.images import ImageError, load_image

    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """An exported file's metadata (names, image_size, checkpoint_sha256, int8 figures ...)."""
    import onnx

    return {p.key: _maybe_json(p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _maybe_json(v: str):
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v
