"""``dsod bench``: speed, compute and memory of a DSOD model and its peers, measured in one process.

    dsod bench model=dsod300 compare=ssd300_vgg16,ssdlite320 json=bench.json

Everything is measured in the same run, after warm-up, as medians over ``runs`` repetitions, with the
models and backends interleaved round-robin (so that load from other processes hits all of them alike):
use the *ratios* between rows, not absolute milliseconds, on a shared machine.

The package: ``timing`` (timers, ceiling, thread probe), ``train`` (the training section, fresh
processes per configuration through ``engine.train_probe``), this module (backends, peers, report).
Keys (declared in ``dsod.cli.options``; ``bench_main`` takes parsed values, missing ones ``DEFAULTS``):
    model      preset name or checkpoint .pt (default dsod300).
    compare    comma-separated peers: ssd300_vgg16, ssdlite320 (torchvision, built with weights=None,
               weights_backbone=None: nothing is downloaded); ``none`` for no peers.
    json       write the results there.
    batch      the large batch (default 8; batch 1 is always measured).
    runs       timed repetitions per measurement (default 5; warm-up 2 more).
    backends   comma-separated backends for our model (default eager,fused,onnxruntime,onnxruntime-int8,
               openvino; openvino only where it is installed):
               eager            the model as trained (NCHW, fp32);
               eager-cl         eager in channels-last;
               fused            ``dsod.model.fast.fuse_for_inference`` (BN folded, channels-last,
                                conv+ReLU in one oneDNN call);
               fused-nchw       the same in NCHW (to show what channels-last brings);
               onnxruntime      ``dsod export`` graph (fp32) in ONNX Runtime;
               onnxruntime-int8 its static int8 quantisation, calibrated on ``data`` images;
               openvino         the fp32 graph in OpenVINO's CPU plugin; openvino-int8 the int8 file in it;
               bf16             eager under bfloat16 autocast.
               Peers always run eager (NCHW fp32, as torchvision builds them).
    imgsz      input size for our model (default: the model's).
    data       images for calibration / post-processing inputs (default: the shared BCCD images when
               present, else synthetic).
    threads    intra-op threads for every model and backend; ``auto`` (default) picks the fastest of
               1..cores for our eager model at the start of the run (recorded). ``threads_sweep``
               (default true) also times the fused backend with each thread count.
    train      ``all`` (default: our model and the peers), ``ours``, or ``none``: images/s and peak RSS
               per extra image of a training step (peak RSS at ``train_batch`` minus at 2 images per
               process, divided by the difference) for the old default path (glibc with a 1 MiB mmap
               threshold, NCHW, fp32, one thread), the new default ``dsod train`` picks on this CPU,
               each switch alone (allocator, channels-last, bf16, threads, DDP processes) and the
               standard (not memory-efficient) network; each configuration in fresh processes
               (``dsod.bench.train``).
    train_model  the model of the training section (default: ``model``).
    train_batch  its batch (default: ``batch``).
    train_steps  timed training steps per configuration (default 3, after 1 warm-up).
    train_rounds round-robin repetitions of the whole section (default 1; medians reported).
    train_only   comma-separated configuration names to keep (old_default and new_default always).

``recommended``: the backend ``backend=auto`` picks on this machine (``dsod.inference.backends``) and why.
Post-processing is timed on the outputs of the model given: a checkpoint's (trained: few candidates
above the thresholds) or a preset's random weights (the worst case), at score 0.01 (``dsod val``)
and 0.25 (``dsod predict``).

Reported per model and backend: ``params``, ``macs``, ``latency_ms_b1``, ``latency_ms_b{batch}``,
``throughput_img_s``, ``postprocess_ms_b1``, ``gflops_achieved``, ``floor_ratio`` (latency over the FLOP
floor: 2 x MACs at the measured convolution ceiling) and ``ratio_vs`` (our latency_ms_b1 divided by
each peer's eager latency_ms_b1 from the same run). Latency is the network forward (for our ONNX
backends: the exported graph, which also decodes boxes and applies softmax), on an input already
resized and normalised; post-processing is timed separately.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import DsodError
from ..files import atomic_write_text
from ..model.load import ModelSpecError, load_model
from ..model.peers import PEERS
from ..model.peers import Peer as _Peer
from ..runtime.allocator import active_allocator
from ..runtime.hardware import cpu_summary, int8_bf16_isa
from .post import postprocess_timings
from .timing import conv_ceiling, count_macs_fn, interleaved, pick_threads

DEFAULT_BACKENDS = ("eager", "fused", "onnxruntime", "onnxruntime-int8", "openvino")
ALL_BACKENDS = ("eager", "eager-cl", "fused", "fused-nchw", "onnxruntime", "onnxruntime-int8", "openvino",
                "openvino-int8", "bf16")
DEFAULTS: Dict[str, Any] = {
    "model": "dsod300", "compare": ",".join(PEERS), "json": None, "batch": 8, "runs": 5,
    "backends": ",".join(DEFAULT_BACKENDS), "imgsz": None, "data": None, "threads": "auto", "threads_sweep": True,
    "train": "all", "train_steps": 3, "train_model": None, "train_batch": None, "train_rounds": 1, "train_only": None,
}


class BenchError(DsodError):
    """A user-facing benchmark failure (one line)."""


def Peer(name: str):
    try:
        return _Peer(name)
    except ValueError as e:
        raise BenchError(str(e)) from None


def load_ours(spec: str, imgsz: Optional[int] = None):
    """(model, config) from a preset name or a checkpoint path (``dsod.model.load.load_model``)."""
    try:
        return load_model(spec, imgsz)
    except ModelSpecError as e:
        raise BenchError(str(e)) from None


def _backend_runner(name: str, model: nn.Module, workdir: Path, calib: np.ndarray, imgsz: int
                    ) -> Tuple[Callable[[torch.Tensor], Any], Dict[str, Any], Optional[Callable[..., Any]]]:
    """(forward(x) callable, notes, decode(x) -> (boxes, scores) where the backend's outputs differ
    from the eager model's (an exported file), else None) for one backend of our model."""
    from ..model.fast import fuse_for_inference

    if name == "eager":
        return model, {}, None
    if name == "eager-cl":
        m = _copy_model(model).to(memory_format=torch.channels_last)
        return (lambda x: m(x.contiguous(memory_format=torch.channels_last))), {}, None
    if name == "fused":
        return fuse_for_inference(model), {"channels_last": True}, None
    if name == "fused-nchw":
        return fuse_for_inference(model, channels_last=False), {"channels_last": False}, None
    if name == "bf16":
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return run, {"dtype": "bfloat16 autocast"}, None
    if name in ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"):
        from ..export import export_onnx, quantize_int8, weight_bits

        fp32 = workdir / "model.onnx"
        if not fp32.exists():
            export_onnx(fuse_for_inference(model, channels_last=False, mkldnn_fusion=False), fp32, imgsz)
        path, notes = fp32, {"graph": "fused, fp32"}
        if name.endswith("-int8"):
            path = workdir / "model-int8.onnx"
            t0 = time.perf_counter()
            if not path.exists():
                quantize_int8(fp32, path, calib)  # weight width from the CPU, as dsod export
            notes = {"graph": f"int8 QDQ (static, minmax, {weight_bits()}-bit weights)", "calibration_images": len(calib),
                     "quantize_s": round(time.perf_counter() - t0, 1)}
        from ..inference.runners import OrtRunner

        try:
            runner = OrtRunner(path, threads=torch.get_num_threads(),
                               engine="openvino" if name.startswith("openvino") else "onnxruntime")
        except ImportError:
            raise BenchError(f"backend {name} needs openvino (pip install openvino)") from None
        return (lambda x: runner.session.predict(x.numpy())), notes, runner
    raise BenchError(f"unknown backend '{name}'; valid: {', '.join(ALL_BACKENDS)}")


def _copy_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


# ------------------------------------------------------------------------------------- main
def _split(v: Any) -> List[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(",") if s.strip() and s.strip().lower() != "none"]


def recommended(spec: str, measured: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, str]:
    """What ``backend=auto`` runs ``spec`` on here: for a checkpoint, ``dsod.inference.backends.choose_backend``
    (which may export it, once); for a preset, its rules without a measured int8 accuracy, with this
    run's timings (``measured``: backend -> result) standing in for its int8 speed check."""
    from ..export import has_int8_dot
    from ..inference.backends import choose_backend, fastest, onnxruntime_available

    if str(spec).endswith(".pt") and Path(spec).is_file():
        c = choose_backend(spec, "auto", "cpu", log=lambda m: print(m))
        return {"backend": c.name, "reason": c.reason}
    if not onnxruntime_available():
        return {"backend": "fused", "reason": "onnxruntime is not installed"}
    if has_int8_dot():
        return {"backend": "onnxruntime-int8", "reason": "int8 dot products on this CPU; for a checkpoint only if "
                "its measured mAP change is within 0.5 points (else onnxruntime)"}
    m = measured or {}
    timed = [k for k in ("onnxruntime", "openvino") if k in m]
    if not timed:
        return {"backend": "onnxruntime", "reason": "no int8 dot products (VNNI/AMX) on this CPU; speeds not measured"}
    served, fp32, ratio = fastest({k: m[k]["latency_ms_b1"] for k in (*timed, "onnxruntime-int8") if k in m})
    if served == "onnxruntime-int8":
        return {"backend": served, "reason": f"no int8 dot products, but int8 measured {ratio:.2f}x "
                f"{fp32} fp32 here (7-bit weights); for a checkpoint only if its mAP change is within 0.5 points"}
    if ratio is not None:
        return {"backend": fp32, "reason": f"no int8 dot products; int8 only {ratio:.2f}x {fp32} fp32 here"}
    return {"backend": fp32, "reason": "no int8 dot products; the fastest fp32 engine measured here"}


def run_bench(opts: Dict[str, Any]) -> Dict[str, Any]:
    """The whole benchmark (see the module docstring); restores the caller's thread count."""
    prev = torch.get_num_threads()
    try:
        return _run_bench({**DEFAULTS, **opts})
    finally:
        torch.set_num_threads(prev)


def _run_bench(opts: Dict[str, Any]) -> Dict[str, Any]:
    from ..export import load_batch

    bad = sorted(set(opts) - set(DEFAULTS))
    if bad:
        raise BenchError(f"unknown key(s) {', '.join(bad)}; valid: {', '.join(DEFAULTS)}")
    name = str(opts.get("model", "dsod300"))
    peers = _split(opts.get("compare", ",".join(PEERS)))
    backends = _split(opts.get("backends", ",".join(DEFAULT_BACKENDS)))
    if opts.get("backends") == DEFAULTS["backends"]:  # the default list: what is installed
        from ..inference.backends import openvino_available
        backends = [b for b in backends if openvino_available() or not b.startswith("openvino")]
    batch = int(opts.get("batch", 8))
    runs = int(opts.get("runs", 5))
    model, cfg = load_ours(name, opts.get("imgsz"))
    probe = None
    if str(opts.get("threads", "auto")).lower() == "auto":
        threads, probe = pick_threads(model, cfg.image_size, runs)
    else:
        threads = int(opts["threads"])
    torch.set_num_threads(threads)
    train = str(opts.get("train", "all")).lower()
    if train not in ("all", "ours", "none", "false", "0"):
        raise BenchError(f"train={train}: valid: all, ours, none")

    imgsz = cfg.image_size
    label = cfg.name if not str(name).endswith(".pt") else Path(name).stem
    print(f"dsod bench: {label} vs {', '.join(peers) or 'no peers'}; backends {', '.join(backends)}; "
          f"{threads} threads; {runs} runs after 2 warm-ups; batch 1 and {batch}")
    report: Dict[str, Any] = {
        "machine": {"cpu": cpu_summary()["model"], "isa": cpu_summary()["isa"], "cores": os.cpu_count(),
                    "threads": threads, "allocator": active_allocator(),
                    "int8_bf16_isa": int8_bf16_isa(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": {"model": name, "compare": peers, "backends": backends, "batch": batch, "runs": runs,
                     "imgsz": imgsz, "threads_probe_ms": probe},
    }

    ceiling = conv_ceiling(runs)
    report["conv_ceiling"] = ceiling
    print(f"conv ceiling: {ceiling['gflops']:.1f} GFLOP/s ({ceiling['best']})")

    images, where = load_batch(opts.get("data"), max(batch, 16), imgsz)
    report["settings"]["images"] = where
    x1 = torch.from_numpy(images[:1].copy())
    xb = torch.from_numpy(images[:batch].copy())
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs = count_macs_fn(model, torch.zeros(1, 3, imgsz, imgsz))

    tmp = tempfile.TemporaryDirectory(prefix="dsod-bench-")  # exported files, removed at the end
    workdir = Path(tmp.name)
    entries: Dict[Tuple[str, str], Dict[str, Any]] = {}
    fns: Dict[Tuple[str, str], Callable[[torch.Tensor], Any]] = {}
    inputs: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor]] = {}
    decoders: Dict[str, Optional[Callable[..., Any]]] = {}
    for be in backends:
        fn, notes, decoders[be] = _backend_runner(be, model, workdir, images[:16], imgsz)
        fns[(label, be)] = fn
        inputs[(label, be)] = (x1, xb)
        entries[(label, be)] = {"params": params, "macs": macs, **notes}
    peer_objs = {}
    for p in peers:
        peer = Peer(p)
        peer_objs[p] = peer
        s = peer.size
        px1 = torch.nn.functional.interpolate(x1, size=(s, s), mode="bilinear", align_corners=False) \
            if s != imgsz else x1
        pxb = torch.nn.functional.interpolate(xb, size=(s, s), mode="bilinear", align_corners=False) \
            if s != imgsz else xb
        fns[(p, "eager")] = peer.net
        inputs[(p, "eager")] = (px1, pxb)
        entries[(p, "eager")] = {"params": peer.params, "macs": count_macs_fn(peer.net, torch.zeros(1, 3, s, s))}

    # Batch 1, then the large batch, all runners interleaved.
    b1 = interleaved({f"{k[0]}/{k[1]}": (lambda f, x: (lambda: f(x)))(fns[k], inputs[k][0]) for k in fns}, runs)
    bb = interleaved({f"{k[0]}/{k[1]}": (lambda f, x: (lambda: f(x)))(fns[k], inputs[k][1]) for k in fns},
                     max(3, runs // 2 + 1), warmup=1)
    for k, e in entries.items():
        e["latency_ms_b1"] = b1[f"{k[0]}/{k[1]}"] * 1e3
        e[f"latency_ms_b{batch}"] = bb[f"{k[0]}/{k[1]}"] * 1e3
        e["throughput_img_s"] = batch / bb[f"{k[0]}/{k[1]}"]
        e["gflops_achieved"] = 2 * e["macs"] / b1[f"{k[0]}/{k[1]}"] / 1e9
        e["floor_ms"] = 2 * e["macs"] / (ceiling["gflops"] * 1e9) * 1e3
        e["floor_ratio"] = e["latency_ms_b1"] / e["floor_ms"]

    # Post-processing (batch 1) at dsod val's and dsod predict's score thresholds (bench/post.py).
    pp = postprocess_timings(model, label, x1, peer_objs, {p: inputs[(p, "eager")][0] for p in peer_objs},
                             decoders, runs)
    for (m, be), e in entries.items():
        e.update(pp.get(f"{m}/{be}", pp[m]))
    report["settings"]["postprocess_weights"] = "trained (checkpoint)" if str(name).endswith(".pt") else \
        "random (preset): the worst case"
    from ..inference.postprocess.nms import kernel as nms_kernel
    report["settings"]["postprocess_nms"] = nms_kernel()

    # Thread sweep on the fused backend.
    if bool(opts["threads_sweep"]) and "fused" in backends and (os.cpu_count() or 1) > 1:
        sweep = {}
        for t in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(t)
            sweep[str(t)] = interleaved({"f": lambda: fns[(label, "fused")](x1)}, runs)["f"] * 1e3
        torch.set_num_threads(threads)
        entries[(label, "fused")]["latency_ms_b1_by_threads"] = sweep

    for be in backends:
        e = entries[(label, be)]
        e["ratio_vs"] = {p: e["latency_ms_b1"] / entries[(p, "eager")]["latency_ms_b1"] for p in peers}
        e["ratio_vs_eager"] = e["latency_ms_b1"] / entries[(label, "eager")]["latency_ms_b1"] \
            if (label, "eager") in entries else None

    # Training: fresh processes per configuration (allocator, threads and peak RSS are per process).
    if train in ("all", "ours"):
        from .train import print_training, training_section

        tname = str(opts.get("train_model") or name)
        report["training"] = training_section(
            tname, int(opts["train_batch"] or batch), int(opts.get("train_steps", 3)),
            peers if train == "all" else [], os.cpu_count() or 1,
            opts.get("imgsz") if tname == name else None, int(opts.get("train_rounds", 1)),
            _split(opts.get("train_only")) or None)
        print_training(report["training"])

    results: Dict[str, Dict[str, Any]] = {}
    for (m, be), e in entries.items():
        results.setdefault(m, {})[be] = e
    report["results"] = results
    tmp.cleanup()
    report["recommended"] = recommended(name, results.get(label))
    rec = report["recommended"]["backend"]
    key = {"torch": "eager"}.get(rec, rec)
    if key in results.get(label, {}):
        report["recommended"]["ratio_vs"] = results[label][key]["ratio_vs"]
        pp_share = results[label][key]["postprocess_ms_b1"] / results[label][key]["latency_ms_b1"]
        report["recommended"]["postprocess_share_b1"] = pp_share
    report["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _print_table(report, label, peers, batch)
    r = report["recommended"]
    ratios = ", ".join(f"{v:.3f}x {p}" for p, v in r.get("ratio_vs", {}).items())
    print(f"recommended: backend={r['backend']} ({r['reason']})" + (f"; batch-1 latency {ratios}" if ratios else ""))
    return report


def _print_train(key: str, r: Dict[str, Any]) -> None:
    if "error" in r:
        print(f"train {key}: failed ({r['error']})")
    else:
        live = f" (live tensors {r['live_gb_per_image']:.3f} GB)" if r.get("live_gb_per_image") is not None else ""
        print(f"train {key}: {r['memory_gb_per_image']:.3f} GB per extra image{live}, {r['train_img_s']:.2f} img/s")


def _print_table(report: Dict[str, Any], label: str, peers: List[str], batch: int) -> None:
    rows = []
    for m, bes in report["results"].items():
        for be, e in bes.items():
            ratios = " ".join(f"{v:.3f}" for v in e.get("ratio_vs", {}).values()) if m == label else ""
            rows.append(f"{m:14s} {be:17s} {e['params'] / 1e6:7.2f}M {e['macs'] / 1e9:7.2f}G "
                        f"{e['latency_ms_b1']:9.1f} {e[f'latency_ms_b{batch}']:9.1f} {e['throughput_img_s']:7.2f} "
                        f"{e['postprocess_ms_b1']:7.1f} {e['gflops_achieved']:7.1f} {e['floor_ratio']:6.2f}  {ratios}")
    head = (f"{'model':14s} {'backend':17s} {'params':>8s} {'MACs':>8s} {'b1 ms':>9s} {f'b{batch} ms':>9s} "
            f"{'img/s':>7s} {'post ms':>7s} {'GFLOP/s':>7s} {'floor':>6s}  ratio vs {', '.join(peers)}")
    print(head)
    print("\n".join(rows))


def bench_main(opts: Dict[str, Any]) -> int:
    """``dsod bench`` (keys: see the module docstring). Prints a table; writes ``json`` when given."""
    report = run_bench(opts)
    if opts.get("json"):
        path = Path(str(opts["json"]))
        atomic_write_text(path, json.dumps(report, indent=2, default=float))
        print(f"wrote {path}")
    return 0
