"""The one evaluation loop: any detector over an evaluation loader, into the one ``Evaluator``.

A detector here is any callable ``detect(images, sizes) -> [dict(boxes, scores, labels), ...]``:
images as ``data.eval_loader`` yields them, ``sizes`` the original (h, w) of each, and detections in
those original pixels with 0-based dataset labels. ``dsod.inference.runners.detector`` makes one from
any runner (eager model, fused model, ONNX Runtime or OpenVINO session) and a post-processor; the
Faster R-CNN arm (``dsod.experiments.frcnn``) passes its own. Training's validation, ``dsod val``,
export's int8 check and the benchmarks all call this function, so they measure the same thing.
(A detections file needs no images: ``metrics.score_detections_file`` feeds the same ``Evaluator``.)"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

from tqdm import tqdm

Detect = Callable[[Any, Sequence[Tuple[int, int]]], List[Dict[str, Any]]]


def evaluate(detect: Detect, loader, evaluator, progress: bool = True, desc: str = "val",
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """``evaluator.compute()`` after ``detect`` has seen every batch of ``loader``. Images the loader
    could not decode (``data.eval_loader`` drops them) are left out of the evaluation, ground truth
    included, and said in one line; ``images_left_out`` in the result lists them ("file: reason")."""
    dropped: List[Dict[str, Any]] = []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        kept = [t for t in targets if "dropped" not in t]
        dropped += [t for t in targets if "dropped" in t]
        if kept:
            sizes = [tuple(int(v) for v in t["orig_size"]) for t in kept]
            evaluator.update([t["image_id"] for t in kept], detect(images, sizes))
    if dropped:
        evaluator.drop([t["image_id"] for t in dropped], [t["dropped"] for t in dropped])
        more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
        log(f"{desc}: {len(dropped)} image(s) could not be decoded and are left out of the evaluation, "
            f"their ground truth too: {dropped[0]['dropped']}{more}")
    return evaluator.compute()
