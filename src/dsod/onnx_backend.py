"""ONNX Runtime and OpenVINO inference for models written by ``dsod export`` (the ``onnxruntime`` and
``openvino`` backends).

    from dsod.onnx_backend import OnnxDetector, OpenVinoDetector
    det = OnnxDetector("best.onnx")                       # fp32 or the int8 "best-int8.onnx"
    det = OpenVinoDetector("best.onnx")                   # the same file in OpenVINO's CPU plugin
    boxes, scores = det.predict(batch)                    # batch: (N, 3, S, S) float32, BGR minus mean

The full pipeline (preprocessing, post-processing, class names) is ``dsod.predict.Detector``, which
runs these files through ``dsod.runners.OrtRunner`` (``Detector.load("best.onnx")``).

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

from .onnx_selection import OUTPUTS as SELECTION_OUTPUTS
from .onnx_selection import selection_feed


class OnnxDetector:
    """An ONNX Runtime session around an exported DSOD.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
    """

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None, selection: bool = True):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found (write one with `dsod export`)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        model = _with_selection(self.path) if selection else None
        self.session = ort.InferenceSession(model or str(self.path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Caffe DetectionOutput's top-k + NMS in this session (dsod.onnx_selection): ``select``
        self.has_selection = "select_rows" in self.output_names
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: Dict[str, Any] = {k: _maybe_json(v) for k, v in meta.items()}
        shape = self.session.get_inputs()[0].shape
        self.image_size = int(self.metadata.get("image_size") or shape[-1])
        self.names: List[str] = list(self.metadata.get("names") or [])
        self.has_nms = "selected" in self.output_names
        anchors = self.session.get_outputs()[self.output_names.index("boxes")].shape[1] \
            if "boxes" in self.output_names else None
        self.num_anchors: Optional[int] = int(self.metadata.get("num_anchors") or 0) or (
            anchors if isinstance(anchors, int) else None)

    def run(self, batch: np.ndarray, selection: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """All outputs by name for a preprocessed batch (``selection``: ``onnx_selection.selection_feed``,
        where the session has one; without it the selection runs idle: top-1, nothing kept)."""
        names = self.output_names if selection else [n for n in self.output_names if n not in SELECTION_OUTPUTS]
        feed = {self.input_name: network_batch(batch)}
        if self.has_selection:
            feed.update(selection or _IDLE)
        return dict(zip(names, self.session.run(names, feed)))

    def predict(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) float32 BGR minus mean -> boxes (N, A, 4) xyxy in [0, 1], scores (N, A, C)."""
        out = self.run(batch)
        return out["boxes"], out["scores"]

    def select(self, batch: np.ndarray, k: int, max_per_class: int, iou: float, score: float) -> Dict[str, np.ndarray]:
        """The selection's outputs (``onnx_selection.OUTPUTS``) for a preprocessed batch;
        ``PostProcessor.from_selection`` turns them into detections."""
        feed = {self.input_name: network_batch(batch), **selection_feed(k, max_per_class, iou, score)}
        return dict(zip(SELECTION_OUTPUTS, self.session.run(list(SELECTION_OUTPUTS), feed)))


_IDLE = selection_feed(1, 0, 0.5, 1.0)


def _with_selection(path: Path) -> Optional[bytes]:
    """The exported model at ``path`` with the selection appended, serialised for ONNX Runtime; None
    where it cannot take one (``onnx`` missing, a file with ``nms=True`` or other outputs), so the
    session runs the file as it is and post-processing selects in Python."""
    try:
        import onnx

        from .onnx_selection import append_selection

        return append_selection(onnx.load(str(path))).SerializeToString()
    except (ImportError, ValueError):
        return None


class OpenVinoDetector:
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
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found (write one with `dsod export`)")
        config: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
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
    from .data.preprocess import preprocess

    return preprocess(rgb, size).numpy()


def list_images(source: Union[str, Path], limit: Optional[int] = None) -> List[Path]:
    """Image files of a file, a folder, a glob, or a VOC root (its JPEGImages), sorted."""
    from .data.images import find_images

    files = find_images(source)
    return files[:limit] if limit else files


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """Upright RGB uint8, decoded as in training (``dsod.data.images.load_image``); a one-line
    ``ImageError`` for an unusable file."""
    from .data.images import ImageError, load_image

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
