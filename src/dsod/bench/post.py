"""``dsod bench``'s post-processing figures (batch 1): what turning one image's network outputs into
detections adds, at ``dsod val``'s score 0.01 and ``dsod predict``'s 0.25.

Every backend hands its decoded outputs to the same selection (``PostProcessor.select``,
``dsod.inference.postprocess.selection``); it is timed on each exported backend's own outputs (int8 scores tie and spread
otherwise than fp32's, which changes the selection's work) and on the eager model's for the PyTorch
backends, interleaved in one loop with the peers' ``postprocess_detections``, so all pay the same
cold caches.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from ..inference.postprocess.detection_output import PostProcessor, decode_outputs
from .timing import interleaved

Decode = Callable[[torch.Tensor], Any]


def postprocess_timings(model, label: str, x1: torch.Tensor, peers: Dict[str, Any], peer_inputs: Dict[str, torch.Tensor],
                        decoders: Dict[str, Optional[Decode]], runs: int) -> Dict[str, Dict[str, Any]]:
    """{model or backend key: {"postprocess_ms_b1", "postprocess_ms_b1_conf025", "postprocess"}}: ``label``
    for the eager model's outputs, ``label/backend`` for a backend with its own (``decoders``: backend ->
    x -> (boxes, scores), or None), and one key per peer."""
    post, post_predict = PostProcessor(), PostProcessor(score_thresh=0.25)
    with torch.inference_mode():
        out = model(x1)
        decoded = {label: decode_outputs(out.bbox_regression, out.cls_logits, model.anchors_cxcywh,
                                         model.config.anchors.variances)}
    for be, decode in decoders.items():
        if decode is not None:
            decoded[f"{label}/{be}"] = decode(x1)
    runners: Dict[str, Callable[[], Any]] = {}
    for key, (boxes, scores) in decoded.items():
        runners[key] = (lambda b, s: (lambda: post.select(b, s, [(480, 640)])))(boxes, scores)
        runners[f"{key}@0.25"] = (lambda b, s: (lambda: post_predict.select(b, s, [(480, 640)])))(boxes, scores)
    for p, peer in peers.items():
        with torch.inference_mode():
            head, feats = peer.net(peer_inputs[p])
        runners[p] = (lambda pe, x, h, f: (lambda: pe.postprocess(x, h, f)))(peer, peer_inputs[p], head, feats)
    pp = interleaved(runners, max(runs, 9))
    result: Dict[str, Dict[str, Any]] = {}
    for key in decoded:
        result[key] = {"postprocess_ms_b1": pp[key] * 1e3, "postprocess_ms_b1_conf025": pp[f"{key}@0.25"] * 1e3,
                       "postprocess": "Caffe's selection on a prefix of the score order (dsod.inference.postprocess.selection)"
                                      + (" on this backend's outputs" if "/" in key else "")}
    for p in peers:
        result[p] = {"postprocess_ms_b1": pp[p] * 1e3, "postprocess": "torchvision postprocess_detections"}
    return result
