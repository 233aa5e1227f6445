"""The top-k and NMS inside the ONNX Runtime session (dsod.onnx_selection) and the Python selection
(dsod.postprocess with ONNX Runtime's NMS kernel) against Caffe's DetectionOutput written plainly,
equal scores included, and against each other."""
import numpy as np
import pytest
import torch

from dsod.postprocess import PostProcessor

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _session(anchors: int, classes: int):
    """A graph whose 'network' hands its inputs through as boxes and scores, plus the selection."""
    from onnx import TensorProto, helper

    from dsod.onnx_selection import append_selection

    io = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["b"], ["boxes"]), helper.make_node("Identity", ["s"], ["scores"])], "net",
        [io("b", TensorProto.FLOAT, ["N", anchors, 4]), io("s", TensorProto.FLOAT, ["N", anchors, classes])],
        [io("boxes", TensorProto.FLOAT, ["N", anchors, 4]), io("scores", TensorProto.FLOAT, ["N", anchors, classes])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    proto = append_selection(proto)
    with pytest.raises(ValueError, match="already"):
        append_selection(proto)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _detect(sess, pp: PostProcessor, boxes: np.ndarray, scores: np.ndarray, sizes=None):
    from dsod.onnx_selection import OUTPUTS, selection_feed

    a = boxes.shape[1]
    feed = {"b": boxes, "s": scores, **selection_feed(pp.candidates(a), pp.max_per_class(a), pp.nms_thresh,
                                                      pp.score_thresh)}
    return pp.from_selection(*sess.run(list(OUTPUTS), feed), sizes)


def _caffe(boxes, scores, score_thresh, nms_thresh, top_k, keep_top_k):
    """Caffe DetectionOutput as written in the original: per class a std::stable_sort by score (equal
    scores: the lower index first), the first top_k, ApplyNMSFast (a candidate is dropped by the first
    kept box over the IoU threshold), then the best keep_top_k over the classes."""
    found = []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        idx = np.nonzero(s > score_thresh)[0]
        idx = idx[np.argsort(-s[idx], kind="stable")][:top_k]
        kept = []
        for i in idx:
            x0, y0, x1, y1 = boxes[i]
            for j in kept:
                q0, q1, q2, q3 = boxes[j]
                inter = max(0.0, min(x1, q2) - max(x0, q0)) * max(0.0, min(y1, q3) - max(y0, q1))
                union = (x1 - x0) * (y1 - y0) + (q2 - q0) * (q3 - q1) - inter
                if inter > nms_thresh * union:
                    break
            else:
                kept.append(i)
        found += [(float(s[i]), c, int(i)) for i in kept]
    found.sort(key=lambda t: -t[0])  # stable: equal scores keep class, then rank order
    return found[:keep_top_k]


def _candidates(seed, anchors, classes, levels=None):
    """Dense, overlapping boxes around a few objects, scores above 0.01 almost everywhere; ``levels``
    quantises the scores (as an int8 model's are), so many of them tie."""
    g = np.random.default_rng(seed)
    centres = g.random((10, 2)) * 0.8 + 0.1
    cxcy = centres[g.integers(0, 10, anchors)] + g.normal(0, 0.02, (anchors, 2))
    wh = g.random((anchors, 2)) * 0.2 + 0.05
    boxes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], 1).astype(np.float32)
    logits = g.normal(0, 2, (anchors, classes + 1))
    scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[:, 1:].astype(np.float32)
    if levels:
        scores = (np.round(scores * levels) / levels).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("levels", [None, 64])
@pytest.mark.parametrize("score_thresh,limit", [(0.01, 200), (0.25, 50)])
def test_in_graph_and_python_selection_are_caffes_detection_output(levels, score_thresh, limit):
    anchors, classes = 1500, 4
    sess = _session(anchors, classes)
    pp = PostProcessor(score_thresh=score_thresh, detections_per_img=limit)
    ties = 0
    for seed in range(3):
        boxes, scores = _candidates(seed, anchors, classes, levels)
        want = _caffe(boxes.astype(np.float64), scores, score_thresh, 0.45, 400, limit)
        in_graph = _detect(sess, pp, boxes[None], scores[None])[0]
        python = PostProcessor(score_thresh=score_thresh, detections_per_img=limit, nms_kernel="onnxruntime").select(
            torch.from_numpy(boxes[None]), torch.from_numpy(scores[None]))[0]
        for got in (in_graph, python):
            # the same boxes, scores and classes in the same order, ties included
            assert [(round(s, 6), c) for s, c, _ in want] == [(round(s, 6), c) for s, c in
                                                               zip(got["scores"].tolist(), got["labels"].tolist())]
            assert np.array_equal(got["boxes"].numpy(), np.clip(boxes[[i for _, _, i in want]], 0, 1))
        ties += len(want) - len({s for s, _, _ in want})
    if levels and score_thresh == 0.01:
        assert ties > 100  # the case that matters: many equal scores among the survivors


def test_in_graph_selection_equals_python_selection_per_image_of_a_batch():
    """Untied scores: exactly ``PostProcessor.select``'s detections, image by image, in pixels; fewer
    anchors than top_k; a threshold that keeps nothing."""
    anchors, classes = 300, 3
    sess = _session(anchors, classes)
    data = [_candidates(seed, anchors, classes) for seed in (5, 6, 7)]
    boxes, scores = np.stack([d[0] for d in data]), np.stack([d[1] for d in data])
    sizes = [(480, 640), (100, 200), (300, 300)]
    for pp in (PostProcessor(), PostProcessor(score_thresh=0.3, detections_per_img=7), PostProcessor(score_thresh=0.999)):
        got = _detect(sess, pp, boxes, scores, sizes)
        want = pp.select(torch.from_numpy(boxes), torch.from_numpy(scores), sizes)
        for g, w in zip(got, want):
            assert g["boxes"].dtype == w["boxes"].dtype and g["labels"].dtype == w["labels"].dtype
            assert torch.equal(g["scores"], w["scores"]) and torch.equal(g["labels"], w["labels"])
            assert torch.equal(g["boxes"], w["boxes"])
    assert sum(len(g["scores"]) for g in got) == 0  # score 0.999: nothing


def test_append_selection_refuses_other_graphs():
    from onnx import TensorProto, helper

    from dsod.onnx_selection import append_selection

    io = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [io("x", TensorProto.FLOAT, [1])], [io("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="not boxes and scores"):
        append_selection(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
