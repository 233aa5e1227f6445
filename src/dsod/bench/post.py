"""``dsod bench``'s post-processing figures (batch 1): what turning one image's network outputs into
detections adds, at ``dsod val``'s score 0.01 and ``dsod predict``'s 0.25.

- backends whose session selects in its graph (ONNX Runtime, ``dsod.onnx_selection``): the whole
  detection (network + top-k + NMS + the best 200) minus the network alone, timed interleaved in one
  loop, so both pay the same cold caches;
- the others: ``PostProcessor.select`` on the decoded outputs of the eager model (Python top-k, one
  NMS call), interleaved with the peers' ``postprocess_detections``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from ..postprocess import PostProcessor, decode_outputs
from .timing import interleaved

Detect = Callable[[torch.Tensor, PostProcessor], Any]


def postprocess_timings(model, label: str, x1: torch.Tensor, peers: Dict[str, Any], peer_inputs: Dict[str, torch.Tensor],
                        networks: Dict[str, Callable[[torch.Tensor], Any]], detects: Dict[str, Optional[Detect]],
                        runs: int) -> Dict[str, Dict[str, Any]]:
    """{model or backend key: {"postprocess_ms_b1", "postprocess_ms_b1_conf025" (ours), "postprocess"}}:
    ``label`` for our Python path, ``label/backend`` for a backend that selects in its graph, and one
    key per peer. ``networks``/``detects``: backend -> network alone / detect(x, post) (None: no
    in-graph selection)."""
    post, post_predict = PostProcessor(), PostProcessor(score_thresh=0.25)
    with torch.inference_mode():
        out = model(x1)
        decoded = decode_outputs(out.bbox_regression, out.cls_logits, model.anchors_cxcywh,
                                 model.config.anchors.variances)
    runners = {label: lambda: post.select(*decoded, [(480, 640)]),
               f"{label}@0.25": lambda: post_predict.select(*decoded, [(480, 640)])}
    for p, peer in peers.items():
        with torch.inference_mode():
            head, feats = peer.net(peer_inputs[p])
        runners[p] = (lambda pe, x, h, f: (lambda: pe.postprocess(x, h, f)))(peer, peer_inputs[p], head, feats)
    pp = interleaved(runners, runs)
    result: Dict[str, Dict[str, Any]] = {
        label: {"postprocess_ms_b1": pp[label] * 1e3, "postprocess_ms_b1_conf025": pp[f"{label}@0.25"] * 1e3,
                "postprocess": "Python top-k + one NMS call (dsod.postprocess)"}}
    for p in peers:
        result[p] = {"postprocess_ms_b1": pp[p] * 1e3, "postprocess": "torchvision postprocess_detections"}
    in_graph = {be: fn for be, fn in detects.items() if fn is not None}
    if in_graph:
        loop: Dict[str, Callable[[], Any]] = {}
        for be, detect in in_graph.items():
            loop[be] = (lambda f: (lambda: f(x1)))(networks[be])
            loop[f"{be}+select"] = (lambda f: (lambda: f(x1, post)))(detect)
            loop[f"{be}+select@0.25"] = (lambda f: (lambda: f(x1, post_predict)))(detect)
        t = interleaved(loop, max(runs, 9))
        for be in in_graph:
            result[f"{label}/{be}"] = {
                "postprocess_ms_b1": max(0.0, t[f"{be}+select"] - t[be]) * 1e3,
                "postprocess_ms_b1_conf025": max(0.0, t[f"{be}+select@0.25"] - t[be]) * 1e3,
                "postprocess": "top-k + NMS in the session's graph (dsod.onnx_selection): detection minus network",
                "detect_ms_b1": t[f"{be}+select"] * 1e3, "network_ms_b1_same_loop": t[be] * 1e3}
    return result
