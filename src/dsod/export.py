"""``dsod export``: a trained DSOD checkpoint to ONNX, verified against eager PyTorch on real images,
optionally with an int8 (ONNX Runtime static quantisation) copy for embedded CPUs.

    dsod export model=runs/train/weights/best.pt                      # -> best.onnx
    dsod export model=best.pt nms=True data=path/to/images            # + NonMaxSuppression in the graph
    dsod export model=best.pt int8=True calib=path/to/train/images    # + best-int8.onnx

Keys of ``export_main(opts)`` (values may be strings, as the CLI passes them):
    model     checkpoint (.pt, from ``dsod train``) to export (required). A preset name (``dsod-nano``)
              exports a randomly initialised model, to try the pipeline.
    format    ``onnx`` (the only format).
    out       output path (default: the checkpoint's path with ``.onnx``).
    nms       add ONNX NonMaxSuppression (default False): extra output ``selected`` (K, 3) int64 rows
              [image, class, box]; per class at most ``max_det`` boxes, IoU ``iou``, score > ``conf``.
    conf, iou, max_det   NMS settings baked into the graph when nms=True (0.01, 0.45, 200: spec §1.7).
    opset     ONNX opset (default 17).
    imgsz     input size (default: the checkpoint's); the batch dimension is always dynamic.
    graph     ``fused`` (default: BN folded into convs, see ``dsod.model.fast``) or ``plain`` (the
              training graph as is). Both compute the same function.
    data      images to verify the export on (file, folder, glob or VOC root; default: ``calib``, else
              the BCCD images of the shared data folder when present, else synthetic images).
    verify_n  how many verification images (default 8). Export fails if the fp32 ONNX model differs
              from eager by more than ``atol`` (default 1e-3) on boxes or scores.
    int8      also write ``<out stem>-int8.onnx``: ONNX Runtime static quantisation (QDQ, per-channel
              int8 weights, uint8 activations) calibrated on ``calib`` images (default False).
    calib     calibration images (default: ``data``); calib_n how many (default 64);
    calib_method   minmax (default) | entropy | percentile.
    int8_keep_fp32  comma-separated node-name parts left in float (e.g. ``/stem/``; default none).
    reduce_range   7-bit int8 weights (default True): avoids the int16 saturation of ONNX Runtime's
              u8 x s8 kernels on x86 CPUs without VNNI (see ``quantize_int8``); False on VNNI/AMX CPUs.

Outputs (see ``dsod.onnx_backend``): ``boxes`` (N, A, 4) xyxy normalised to the input, default boxes
baked in; ``scores`` (N, A, C) softmax without background; [``selected``].
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .box_coder import decode
from .boxes import cxcywh_to_xyxy
from .hardware import int8_bf16_isa  # noqa: F401 - re-exported (dsod.export.int8_bf16_isa)


class ExportError(Exception):
    """A user-facing export failure (one line)."""


# ----------------------------------------------------------------------------------------- graph
class _OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (boxes (N, A, 4), scores (N, C, A)) -> (K, 3) [image, class, box].
    Eager forward: the same selection with torchvision's NMS (used while tracing and for checks)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou: float, score_thresh: float):
        from torchvision.ops import nms

        rows = []
        for n in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[n, c]
                idx = torch.nonzero(s > score_thresh).flatten()
                keep = nms(boxes[n, idx], s[idx], iou)[:max_per_class]
                k = idx[keep]
                rows.append(torch.stack([torch.full_like(k, n), torch.full_like(k, c), k], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score_thresh):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_thresh], dtype=torch.float32)))


class DecodedDetector(nn.Module):
    """DSOD + decoding: images -> (boxes xyxy normalised (N, A, 4), scores (N, A, C-1)) [, selected].
    The default boxes are a constant of the graph."""

    def __init__(self, model: nn.Module, variances: Tuple[float, float] = (0.1, 0.2), nms: bool = False,
                 conf: float = 0.01, iou: float = 0.45, max_det: int = 200):
        super().__init__()
        self.model = model
        self.register_buffer("anchors", model.anchors_cxcywh.detach().clone(), persistent=False)
        self.variances = tuple(variances)
        self.nms, self.conf, self.iou, self.max_det = nms, float(conf), float(iou), int(max_det)

    def forward(self, images: torch.Tensor):
        loc, logits = self.model(images)
        boxes = cxcywh_to_xyxy(decode(loc, self.anchors, self.variances))
        scores = torch.softmax(logits, dim=-1)[..., 1:]
        if not self.nms:
            return boxes, scores
        selected = _OnnxNMS.apply(boxes, scores.transpose(1, 2).contiguous(), self.max_det, self.iou, self.conf)
        return boxes, scores, selected


def export_onnx(model: nn.Module, path: Path, imgsz: int, *, nms: bool = False, opset: int = 17,
                conf: float = 0.01, iou: float = 0.45, max_det: int = 200,
                metadata: Optional[Dict[str, Any]] = None) -> DecodedDetector:
    """Write ``path``; returns the wrapped eager module that was exported (for verification)."""
    import onnx

    cfg = getattr(model, "config", None)
    variances = cfg.anchors.variances if cfg is not None else (0.1, 0.2)
    wrapper = DecodedDetector(model, variances, nms=nms, conf=conf, iou=iou, max_det=max_det).eval()
    outputs = ["boxes", "scores"] + (["selected"] if nms else [])
    dynamic = {"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
    if nms:
        dynamic["selected"] = {0: "num_selected"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter; the result is verified below
        torch.onnx.export(wrapper, (torch.zeros(1, 3, imgsz, imgsz),), str(tmp), dynamo=False,
                          input_names=["images"], output_names=outputs, dynamic_axes=dynamic,
                          opset_version=opset, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    meta = dict(metadata or {})
    meta.update({"image_size": imgsz, "nms": nms, "conf": conf, "iou": iou, "max_det": max_det,
                 "num_anchors": int(model.anchors_cxcywh.shape[0]), "input": "BGR minus (104,117,123), NCHW"})
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), json.dumps(v)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return wrapper


# ------------------------------------------------------------------------------------ images
def default_image_source() -> Optional[Path]:
    """BCCD images of the shared data folder (``DSOD_SHARED_DATA`` or ../shared/data), if present."""
    env = os.environ.get("DSOD_SHARED_DATA")
    roots = [Path(env)] if env else []
    here = Path(__file__).resolve()
    roots += [here.parents[3] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for r in roots:
        p = r / "bccd" / "JPEGImages"
        if p.is_dir():
            return p
    return None


def load_batch(source: Optional[str], n: int, imgsz: int, seed: int = 0) -> Tuple[np.ndarray, str]:
    """Up to ``n`` preprocessed images (n, 3, S, S) float32 and a description of where they came from.
    Without a source: synthetic shapes (``dsod.synthetic``), clearly labelled as such."""
    from .onnx_backend import list_images, preprocess_rgb, read_rgb

    src = source or default_image_source()
    if src is not None:
        files = list_images(src)
        if len(files) > n:  # spread over the set rather than the first n files
            files = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
        from .data.images import ImageError

        try:
            batch = np.stack([preprocess_rgb(read_rgb(f), imgsz) for f in files])
        except ImageError as e:
            raise ExportError(str(e)) from None
        return batch, f"{len(files)} images from {src}"
    from .synthetic import _draw_image

    rng = np.random.default_rng(seed)
    imgs = [np.asarray(_draw_image(rng, imgsz, 4)[0]) for _ in range(n)]
    return np.stack([preprocess_rgb(im, imgsz) for im in imgs]), f"{n} synthetic images (no data= given)"


# ------------------------------------------------------------------------------ verification
def verify(wrapper: nn.Module, onnx_path: Path, batch: np.ndarray, threads: Optional[int] = None
           ) -> Dict[str, float]:
    """Max abs differences between eager and ONNX Runtime on ``batch`` (run as one dynamic batch)."""
    from .onnx_backend import OnnxDetector

    det = OnnxDetector(onnx_path, threads=threads)
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(batch))
    out = det.run(batch)
    diffs = {"boxes": float(np.abs(out["boxes"] - ref[0].numpy()).max()),
             "scores": float(np.abs(out["scores"] - ref[1].numpy()).max())}
    if "selected" in out:
        a = {tuple(r) for r in out["selected"].tolist()}
        b = {tuple(r) for r in ref[2].tolist()}
        diffs["nms_agreement"] = len(a & b) / max(1, len(a | b))
    return diffs


# ------------------------------------------------------------------------------- quantisation
def quantize_int8(fp32_path: Path, out_path: Path, calib: np.ndarray, method: str = "minmax",
                  per_channel: bool = True, reduce_range: bool = True, keep_fp32: Sequence[str] = ()) -> Path:
    """ONNX Runtime static quantisation (QDQ): int8 per-channel weights, uint8 activations, calibrated on
    ``calib`` (n, 3, S, S). Post-processing ops (decode, softmax, NMS) stay in float.

    ``reduce_range`` (default on) quantises weights to 7 bits. On x86 CPUs without VNNI (AVX2, and
    AVX-512 without VNNI) ONNX Runtime's u8 x s8 kernels use ``vpmaddubsw``, which adds two u8*s8
    products into a *saturating* int16; the first convolution (image input, BN folded into few large
    weights) overflows it. Measured on the BCCD recipe model (``benchmarks/bench_int8.py``): VOC07 mAP
    86.87 fp32 -> 85.01 int8 with 8-bit weights, 86.85 with 7-bit weights; 8-bit with only the first conv
    in float 87.02, so the loss was that layer's saturation. No measurable speed cost here. ONNX
    Runtime's quantisation docs give the same remedy. On CPUs with VNNI/AMX there is no saturation:
    ``reduce_range=False`` keeps 8 bits.

    ``keep_fp32``: node-name substrings (e.g. ``/stem/``) left in float (mixed precision; how the
    sensitivity of each part was measured, docs/PERFORMANCE.md)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"calib_method={method}: valid: {', '.join(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self, data: np.ndarray):
            self.it = iter([{"images": data[i:i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.it, None)

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        # Quantise the network only: the ops after the last convolutions (reshape/concat of the head,
        # decode, softmax, NMS) are cheap and need float precision.
        model = onnx.load(str(pre))
        ops = [n for n in model.graph.node if n.op_type in ("Conv", "Relu", "MaxPool", "Concat", "Mul", "Add",
                                                            "BatchNormalization")]
        head_nodes = _nodes_after_last_conv(model)
        unmatched = [k for k in keep_fp32 if not any(k in n.name for n in ops)]
        if unmatched:
            raise ExportError(f"int8_keep_fp32: {', '.join(unmatched)} matches no node (names look like "
                              f"{ops[0].name if ops else '/model/backbone/stem/stem.0/Conv'})")
        nodes = [n.name for n in ops if n.name not in head_nodes and not any(k in n.name for k in keep_fp32)]
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        quantize_static(str(pre), str(tmp), Reader(calib), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=methods[method], nodes_to_quantize=nodes,
                        reduce_range=reduce_range,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        src = onnx.load(str(fp32_path))
        q = onnx.load(str(tmp))
        del q.metadata_props[:]
        for p in src.metadata_props:
            e = q.metadata_props.add()
            e.key, e.value = p.key, p.value
        e = q.metadata_props.add()
        e.key, e.value = "quantization", json.dumps(f"int8 static QDQ, {method} calibration on {len(calib)} images, "
                                                  f"{7 if reduce_range else 8}-bit weights")
        onnx.save(q, str(tmp))
        os.replace(tmp, out_path)
    return out_path


def _nodes_after_last_conv(model) -> set:
    """Names of nodes that only depend on head outputs (nothing downstream is a Conv)."""
    consumers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    memo: Dict[str, bool] = {}

    def feeds_conv(node) -> bool:
        if node.name in memo:
            return memo[node.name]
        memo[node.name] = False
        res = any(c.op_type == "Conv" or feeds_conv(c) for o in node.output for c in consumers.get(o, []))
        memo[node.name] = res
        return res

    return {n.name for n in model.graph.node if n.op_type != "Conv" and not feeds_conv(n)}


# ------------------------------------------------------------------------------------- main
def _bool(v: Any, key: str = "value") -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on", "y"):
        return True
    if s in ("0", "false", "no", "off", "n", "none", ""):
        return False
    raise ExportError(f"{key}={v}: expected a boolean (true/false)")


def load_model(spec: str) -> Tuple[nn.Module, Dict[str, Any], Path]:
    """(eval model, metadata, default output path) from a checkpoint path or a preset name."""
    from .config import PRESETS

    p = Path(str(spec)).expanduser()
    if p.suffix == ".pt" or p.exists():
        from .engine.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint

        try:
            ckpt = load_checkpoint(p)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
        model, cfg = build_from_checkpoint(ckpt)
        meta = {"names": list(ckpt.get("names") or []), "category_ids": ckpt.get("category_ids"),
                "model": cfg.name, "source": p.name}
        return model, meta, p.with_suffix(".onnx")
    if str(spec) in PRESETS:
        from .model import build_model

        model = build_model(str(spec)).eval()
        return model, {"names": [], "model": str(spec), "source": "random init"}, Path(f"{spec}.onnx")
    raise ExportError(f"model={spec}: not a checkpoint file nor a preset name")


def export_main(opts: Dict[str, Any]) -> int:
    """``dsod export`` (keys: see the module docstring). Prints what it wrote and the verification."""
    allowed = {"model", "format", "out", "nms", "conf", "iou", "max_det", "opset", "imgsz", "graph", "data",
               "verify_n", "atol", "int8", "calib", "calib_n", "calib_method", "reduce_range", "int8_keep_fp32",
               "threads"}
    bad = sorted(set(opts) - allowed)
    if bad:
        raise ExportError(f"unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(allowed))}")
    if "model" not in opts:
        raise ExportError("model= is required (a checkpoint .pt)")
    fmt = str(opts.get("format", "onnx")).lower()
    if fmt != "onnx":
        raise ExportError(f"format={fmt}: only onnx is supported")
    # Parse every value before the (slow) export, so a typo fails at once.
    nms = _bool(opts.get("nms", False), "nms")
    int8 = _bool(opts.get("int8", False), "int8")
    rr = _bool(opts.get("reduce_range", True), "reduce_range")
    keep = [k for k in str(opts.get("int8_keep_fp32") or "").split(",") if k]
    model, meta, default_out = load_model(opts["model"])
    cfg = model.config
    imgsz = int(opts.get("imgsz") or cfg.image_size)
    if imgsz != cfg.image_size:
        from .model import build_model

        resized = build_model(cfg.replace(image_size=imgsz))
        resized.load_state_dict(model.state_dict())
        model = resized.eval()
    graph = str(opts.get("graph", "fused"))
    if graph == "fused":
        from .model.fast import fuse_for_inference

        net: nn.Module = fuse_for_inference(model, channels_last=False, mkldnn_fusion=False)
    elif graph == "plain":
        net = model
    else:
        raise ExportError(f"graph={graph}: valid: fused, plain")
    out = Path(opts.get("out") or default_out)
    t0 = time.perf_counter()
    wrapper = export_onnx(net, out, imgsz, nms=nms, opset=int(opts.get("opset", 17)),
                          conf=float(opts.get("conf", 0.01)), iou=float(opts.get("iou", 0.45)),
                          max_det=int(opts.get("max_det", 200)), metadata=meta)
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, {graph} graph, opset {opts.get('opset', 17)}, "
          f"input images (N, 3, {imgsz}, {imgsz}) BGR-minus-mean, dynamic N{', with NMS' if nms else ''}) "
          f"in {time.perf_counter() - t0:.1f} s")

    # Verify against eager (the original, unfused model) on real images.
    ref = DecodedDetector(model, cfg.anchors.variances, nms=nms, conf=float(opts.get("conf", 0.01)),
                          iou=float(opts.get("iou", 0.45)), max_det=int(opts.get("max_det", 200))).eval()
    data = opts.get("data") or opts.get("calib")
    batch, where = load_batch(data, int(opts.get("verify_n", 8)), imgsz)
    threads = int(opts["threads"]) if opts.get("threads") else None
    diffs = verify(ref, out, batch, threads)
    atol = float(opts.get("atol", 1e-3))
    print(f"verified on {where}: max |onnx - eager| boxes {diffs['boxes']:.2e}, scores {diffs['scores']:.2e}"
          + (f", NMS selections agree {diffs['nms_agreement']:.1%}" if "nms_agreement" in diffs else ""))
    if diffs["boxes"] > atol or diffs["scores"] > atol:
        raise ExportError(f"ONNX output differs from eager by more than atol={atol}")

    if int8:
        calib_src = opts.get("calib") or data
        calib, cwhere = load_batch(calib_src, int(opts.get("calib_n", 64)), imgsz, seed=1)
        q_out = out.with_name(f"{out.stem}-int8.onnx")
        t0 = time.perf_counter()
        method = str(opts.get("calib_method", "minmax"))
        quantize_int8(out, q_out, calib, method=method, reduce_range=rr, keep_fp32=keep)
        print(f"quantised {q_out} ({q_out.stat().st_size / 1e6:.1f} MB, int8 QDQ, {7 if rr else 8}-bit weights, "
              f"{method} calibration on "
              f"{cwhere}) in {time.perf_counter() - t0:.1f} s")
        isa = int8_bf16_isa()
        if isa == []:
            print(f"note: this CPU has no int8 dot-product instructions (VNNI/AMX): here the int8 model runs no "
                  f"faster than the fp32 ONNX model; ship {out.name} for it (docs/PERFORMANCE.md)")
        qd = verify(ref, q_out, batch, threads)
        print(f"int8 vs eager on {where}: max |diff| boxes {qd['boxes']:.3f}, scores {qd['scores']:.3f} "
              "(quantisation error; see docs/PERFORMANCE.md for speed and mAP)")
    return 0
