"""Caffe ``DetectionOutput``'s candidate selection (ORIGINAL.md §1.7) inside the ONNX Runtime session
that runs the network: per-class top-k, then greedy per-class NMS, as graph nodes appended to an
exported model when it is loaded (``OnnxDetector``); the exported files themselves are unchanged.

Why in the graph: at ``dsod val``'s score 0.01 the BCCD recipe model hands post-processing 3 x 400
candidates; the same selection done from Python (numpy top-k + a separate one-node NMS session,
``dsod.postprocess``) measured 1.3-1.7 ms beside int8's ~11 ms per image on an AMD Zen 4 (AVX-512,
VNNI, no AMX), the selection in the model's own session 0.5-1.2 ms, and only the candidates' boxes
leave the session (docs/PERFORMANCE.md "Post-processing", with the commands). On a 13-class model the
kernels' own work dominates and both ways cost ~3.5 ms.

Appended nodes, for ``boxes`` (N, A, 4) and ``scores`` (N, A, C):

    TopK(scores^T, select_k, axis=2)            -> top_scores (N, C, k), sorted down, and their anchors;
                                                   equal scores: the lower anchor first (ONNX TopK),
                                                   as Caffe's std::stable_sort
    GatherND(boxes, anchors, batch_dims=1)      -> candidate_boxes (N*C, k, 4)
    NonMaxSuppression(..., select_max, select_iou, select_score)
                                                -> select_rows (S, 3): [image*C + class, 0, rank]

``select_k`` (Caffe's ``top_k``, at most A), ``select_max`` (kept per class: ``min(k, keep_top_k)`` is
exact, a class's kept boxes beyond the image's limit can never be among its best), ``select_iou`` and
``select_score`` (ONNX's "score > threshold", as Caffe's) are fed at run time, so one session serves
``dsod val`` (0.01) and ``dsod predict`` (0.25). The best ``keep_top_k`` over the classes, the
scaling to image pixels and clipping are ``PostProcessor.from_selection``.
"""
from __future__ import annotations

from typing import Any, Dict

INPUTS = ("select_k", "select_max", "select_iou", "select_score")
OUTPUTS = ("top_scores", "candidate_boxes", "select_rows")
MIN_OPSET = 12  # GatherND's batch_dims


def default_opset(proto: Any) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def append_selection(proto: Any) -> Any:
    """Add the selection to ``proto`` (an ``onnx.ModelProto`` whose outputs are ``boxes`` and ``scores``),
    in place; returns it. ``ValueError`` when the graph cannot take it (other outputs, an old opset, or
    a selection already there)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    outputs = {o.name for o in g.output}
    if outputs & set(OUTPUTS) or {i.name for i in g.input} & set(INPUTS):
        raise ValueError("the graph already has a selection")
    if outputs != {"boxes", "scores"}:  # e.g. `dsod export nms=True`'s own "selected"
        raise ValueError(f"the graph's outputs are {sorted(outputs)}, not boxes and scores")
    if default_opset(proto) < MIN_OPSET:
        raise ValueError(f"opset {default_opset(proto)} < {MIN_OPSET}")
    p = "dsod_select/"
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), p + n) for n, v in (
        ("index_shape", [0, -1, 1]), ("two", [2]), ("three", [3]), ("minus_one", [-1]), ("one", [1]), ("four", [4]))])
    g.node.extend([
        helper.make_node("Transpose", ["scores"], [p + "by_class"], perm=[0, 2, 1]),  # (N, C, A)
        helper.make_node("TopK", [p + "by_class", "select_k"], ["top_scores", p + "anchors"],
                         axis=2, largest=1, sorted=1),  # (N, C, k)
        helper.make_node("Reshape", [p + "anchors", p + "index_shape"], [p + "index"]),  # (N, C*k, 1)
        helper.make_node("GatherND", ["boxes", p + "index"], [p + "candidates"], batch_dims=1),  # (N, C*k, 4)
        helper.make_node("Shape", [p + "anchors"], [p + "nck"]),  # k, for the per-class shapes below
        helper.make_node("Slice", [p + "nck", p + "two", p + "three"], [p + "k"]),
        helper.make_node("Concat", [p + "minus_one", p + "k", p + "four"], [p + "box_shape_k"], axis=0),
        helper.make_node("Concat", [p + "minus_one", p + "one", p + "k"], [p + "score_shape_k"], axis=0),
        helper.make_node("Reshape", [p + "candidates", p + "box_shape_k"], ["candidate_boxes"]),  # (N*C, k, 4)
        helper.make_node("Reshape", ["top_scores", p + "score_shape_k"], [p + "class_scores"]),  # (N*C, 1, k)
        helper.make_node("NonMaxSuppression", ["candidate_boxes", p + "class_scores", "select_max", "select_iou",
                                               "select_score"], ["select_rows"]),
    ])
    io = helper.make_tensor_value_info
    g.input.extend([io("select_k", TensorProto.INT64, [1]), io("select_max", TensorProto.INT64, [1]),
                    io("select_iou", TensorProto.FLOAT, [1]), io("select_score", TensorProto.FLOAT, [1])])
    g.output.extend([io("top_scores", TensorProto.FLOAT, ["N", "C", "k"]),
                     io("candidate_boxes", TensorProto.FLOAT, ["NC", "k", 4]),
                     io("select_rows", TensorProto.INT64, ["S", 3])])
    return proto


def selection_feed(k: int, max_per_class: int, iou: float, score: float) -> Dict[str, Any]:
    import numpy as np

    return {"select_k": np.array([k], np.int64), "select_max": np.array([max_per_class], np.int64),
            "select_iou": np.array([iou], np.float32), "select_score": np.array([score], np.float32)}
