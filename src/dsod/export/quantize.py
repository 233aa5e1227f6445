"""int8 copies of an exported graph: ONNX Runtime static quantisation (QDQ), weight width from the CPU."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..files import atomic_path
from ..runtime.hardware import int8_bf16_isa
from .graph import ExportError

# int8 dot-product instructions without the int16 saturation of AVX2's vpmaddubsw (see quantize_int8)
INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


def has_int8_dot() -> bool:
    """Whether this CPU has int8 dot products (VNNI or AMX): where int8 inference pays, at 8 bits."""
    return any(f in (int8_bf16_isa() or []) for f in INT8_DOT_ISA)


def weight_bits() -> int:
    """8-bit int8 weights on CPUs with VNNI/AMX, 7-bit elsewhere (``quantize_int8``'s ``reduce_range``)."""
    return 8 if has_int8_dot() else 7


def quantize_int8(fp32_path: Path, out_path: Path, calib: np.ndarray, method: str = "minmax",
                  per_channel: bool = True, reduce_range: Optional[bool] = None, keep_fp32: Sequence[str] = (),
                  metadata: Optional[Dict[str, Any]] = None) -> Path:
    """ONNX Runtime static quantisation (QDQ): int8 per-channel weights, uint8 activations, calibrated on
    ``calib`` (n, 3, S, S). Post-processing ops (decode, softmax, NMS) stay in float.

    ``reduce_range`` quantises weights to 7 bits; None (default) decides from the CPU (``weight_bits``:
    7 bits without VNNI/AMX, 8 with). On x86 CPUs without VNNI (AVX2, and
    AVX-512 without VNNI) ONNX Runtime's u8 x s8 kernels use ``vpmaddubsw``, which adds two u8*s8
    products into a *saturating* int16; the first convolution (image input, BN folded into few large
    weights) overflows it. Measured on the BCCD recipe model (``benchmarks/bench_int8.py``): VOC07 mAP
    86.87 fp32 -> 85.01 int8 with 8-bit weights, 86.85 with 7-bit weights; 8-bit with only the first conv
    in float 87.02, so the loss was that layer's saturation. No measurable speed cost here. ONNX
    Runtime's quantisation docs give the same remedy. On CPUs with VNNI/AMX there is no saturation:
    ``reduce_range=False`` keeps 8 bits.

    ``metadata``: extra entries for the int8 file (besides the fp32 file's and ``quantization``,
    ``weight_bits``).

    ``keep_fp32``: node-name substrings (e.g. ``/stem/``) left in float (mixed precision; how the
    sensitivity of each part was measured, docs/PERFORMANCE.md)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if reduce_range is None:
        reduce_range = weight_bits() == 7
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
        tmp = Path(td) / "int8.onnx"
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
        extra = {"quantization": f"int8 static QDQ, {method} calibration on {len(calib)} images, "
                                 f"{7 if reduce_range else 8}-bit weights",
                 "weight_bits": 7 if reduce_range else 8, **(metadata or {})}
        for k, v in extra.items():
            e = q.metadata_props.add()
            e.key, e.value = k, json.dumps(v)
        with atomic_path(out_path) as final:
            onnx.save(q, str(final))
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
