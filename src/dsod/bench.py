"""``dsod bench``: speed, compute and memory of a DSOD model and its peers, measured in one process.

    dsod bench model=dsod300 compare=ssd300_vgg16,ssdlite320 json=bench.json

Everything is measured in the same run, after warm-up, as medians over ``runs`` repetitions, with the
models and backends interleaved round-robin (so that load from other processes hits all of them alike):
use the *ratios* between rows, not absolute milliseconds, on a shared machine.

Keys of ``bench_main(opts)`` (values may be strings, as the CLI passes them):
    model      preset name or checkpoint .pt (default dsod300).
    compare    comma-separated peers: ssd300_vgg16, ssdlite320 (torchvision, built with weights=None,
               weights_backbone=None: nothing is downloaded); ``none`` for no peers.
    json       write the results there.
    batch      the large batch (default 8; batch 1 is always measured).
    runs       timed repetitions per measurement (default 5; warm-up 2 more).
    backends   comma-separated backends for our model (default eager,fused,onnxruntime,onnxruntime-int8):
               eager            the model as trained (NCHW, fp32);
               eager-cl         eager in channels-last;
               fused            ``dsod.model.fast.fuse_for_inference`` (BN folded, pre-allocated dense
                                blocks, channels-last, conv+ReLU in one oneDNN call);
               fused-nchw       the same in NCHW (to show what channels-last brings);
               onnxruntime      ``dsod export`` graph (fp32) in ONNX Runtime;
               onnxruntime-int8 its static int8 quantisation, calibrated on ``data`` images;
               bf16             eager under bfloat16 autocast.
               Peers always run eager (NCHW fp32, as torchvision builds them).
    imgsz      input size for our model (default: the model's).
    data       images for calibration / post-processing inputs (default: the shared BCCD images when
               present, else synthetic).
    threads    intra-op threads for every model and backend; ``auto`` (default) picks the fastest of
               1..cores for our eager model at the start of the run (recorded). ``threads_sweep``
               (default true) also times the fused backend with each thread count.
    train      ``all`` (default: our model with and without memory-efficient dense blocks, and the peers),
               ``ours``, or ``none``: training-step time and peak memory per image, each configuration in
               a fresh process (peak RSS at batch ``batch`` minus batch 2, divided by the difference).
    train_steps  timed training steps per configuration (default 3, after 1 warm-up).

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
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .export import int8_bf16_isa

PEERS = ("ssd300_vgg16", "ssdlite320")
DEFAULT_BACKENDS = ("eager", "fused", "onnxruntime", "onnxruntime-int8")
ALL_BACKENDS = ("eager", "eager-cl", "fused", "fused-nchw", "onnxruntime", "onnxruntime-int8", "bf16")


class BenchError(Exception):
    """A user-facing benchmark failure (one line)."""


# ------------------------------------------------------------------------------------ timing
def _time_once(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(runners: Dict[str, Callable[[], Any]], runs: int, warmup: int = 2) -> Dict[str, float]:
    """Median seconds per runner, timing them round-robin (runs rounds, after warm-up)."""
    times: Dict[str, List[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in runners.values():
                fn()
        for _ in range(runs):
            for k, fn in runners.items():
                times[k].append(_time_once(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def conv_ceiling(runs: int = 5) -> Dict[str, Any]:
    """Best GFLOP/s of large 3x3 convolutions (NCHW and channels-last): the ceiling the FLOP floor uses."""
    shapes = [(64, 64, 150), (128, 128, 75), (256, 256, 38)]
    runners, flops = {}, {}
    for cin, cout, hw in shapes:
        for cl in (False, True):
            conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False).eval()
            x = torch.randn(1, cin, hw, hw)
            if cl:
                conv = conv.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            key = f"3x3 {cin}->{cout} @{hw}{' CL' if cl else ''}"
            runners[key] = (lambda c, t: (lambda: c(t)))(conv, x)
            flops[key] = 2 * cin * cout * 9 * hw * hw
    med = interleaved(runners, runs)
    per = {k: flops[k] / med[k] / 1e9 for k in med}
    best = max(per, key=per.get)
    return {"gflops": per[best], "best": best, "per_shape_gflops": {k: round(v, 1) for k, v in per.items()}}


def pick_threads(model: nn.Module, imgsz: int, runs: int) -> Tuple[int, Dict[str, float]]:
    """The intra-op thread count (1..cores) under which our eager model's batch-1 forward is fastest right
    now; every model and backend of the run then uses it (on a machine shared with other jobs, OpenMP
    with as many threads as cores can be many times slower than one thread)."""
    cores = os.cpu_count() or 1
    x = torch.zeros(1, 3, imgsz, imgsz)
    times: Dict[str, List[float]] = {str(t): [] for t in range(1, cores + 1)}
    with torch.inference_mode():
        for r in range(max(3, runs // 2 + 1) + 1):
            for t in range(1, cores + 1):
                torch.set_num_threads(t)
                dt = _time_once(lambda: model(x))
                if r:  # first round is warm-up
                    times[str(t)].append(dt)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return int(min(med, key=med.get)), med


def count_macs_fn(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------- peers
class Peer:
    """A torchvision SSD built with weights=None, weights_backbone=None (no download)."""

    def __init__(self, name: str):
        from torchvision.models import detection

        if name == "ssd300_vgg16":
            self.model, self.size = detection.ssd300_vgg16(weights=None, weights_backbone=None), 300
        elif name in ("ssdlite320", "ssdlite320_mobilenet_v3_large"):
            self.model = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
            self.size = 320
        else:
            raise BenchError(f"unknown peer '{name}'; valid: {', '.join(PEERS)}")
        self.name = name
        self.model.eval()
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def net(self, x: torch.Tensor):
        feats = list(self.model.backbone(x).values())
        return self.model.head(feats), feats

    def postprocess(self, x: torch.Tensor, head, feats):
        from torchvision.models.detection.image_list import ImageList

        images = ImageList(x, [(self.size, self.size)] * x.shape[0])
        anchors = self.model.anchor_generator(images, feats)
        return self.model.postprocess_detections(head, anchors, images.image_sizes)


# --------------------------------------------------------------------------------- our model
def load_ours(spec: str, imgsz: Optional[int] = None):
    """(model, config) from a preset name or a checkpoint path."""
    from .config import PRESETS
    from .model import build_model

    p = Path(str(spec)).expanduser()
    if p.suffix == ".pt" or p.is_file():
        from .engine.checkpoint import build_from_checkpoint, load_checkpoint

        model, cfg = build_from_checkpoint(load_checkpoint(p))
    elif str(spec) in PRESETS:
        model = build_model(str(spec))
        cfg = model.config
    else:
        raise BenchError(f"model={spec}: not a preset nor a checkpoint file")
    if imgsz and int(imgsz) != cfg.image_size:
        resized = build_model(cfg.replace(image_size=int(imgsz)))
        resized.load_state_dict(model.state_dict())
        model, cfg = resized, resized.config
    return model.eval(), cfg


def _backend_runner(name: str, model: nn.Module, workdir: Path, calib: np.ndarray, imgsz: int
                    ) -> Tuple[Callable[[torch.Tensor], Any], Dict[str, Any]]:
    """(forward(x) callable, notes) for one backend of our model."""
    from .model.fast import fuse_for_inference

    if name == "eager":
        return model, {}
    if name == "eager-cl":
        m = _copy_model(model).to(memory_format=torch.channels_last)
        return (lambda x: m(x.contiguous(memory_format=torch.channels_last))), {}
    if name == "fused":
        return fuse_for_inference(model), {"channels_last": True}
    if name == "fused-nchw":
        return fuse_for_inference(model, channels_last=False), {"channels_last": False}
    if name == "bf16":
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return run, {"dtype": "bfloat16 autocast"}
    if name in ("onnxruntime", "onnxruntime-int8"):
        from .export import export_onnx, quantize_int8
        from .onnx_backend import OnnxDetector

        fp32 = workdir / "model.onnx"
        if not fp32.exists():
            export_onnx(fuse_for_inference(model, channels_last=False, mkldnn_fusion=False), fp32, imgsz)
        path, notes = fp32, {"graph": "fused, fp32"}
        if name == "onnxruntime-int8":
            path = workdir / "model-int8.onnx"
            t0 = time.perf_counter()
            quantize_int8(fp32, path, calib)
            notes = {"graph": "int8 QDQ (static, minmax, 7-bit weights)", "calibration_images": len(calib),
                     "quantize_s": round(time.perf_counter() - t0, 1)}
        det = OnnxDetector(path, threads=torch.get_num_threads())
        return (lambda x: det.predict(x.numpy())), notes
    raise BenchError(f"unknown backend '{name}'; valid: {', '.join(ALL_BACKENDS)}")


def _copy_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


# ---------------------------------------------------------------------------------- training
def _train_probe(kind: str, name: str, batch: int, steps: int, threads: int, memory_efficient: bool,
                 imgsz: Optional[int], queue, tune_allocator: bool = True) -> None:
    """Child process: a few SGD steps at ``batch``; reports median step seconds and peak RSS (bytes).
    ``tune_allocator``: set glibc's mmap threshold as ``dsod train`` does on CPU (engine/memory.py)."""
    try:
        if tune_allocator:
            from .engine.memory import tune_cpu_allocator
            tune_cpu_allocator()
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        if kind == "ours":
            from .loss import MultiBoxLoss

            model, cfg = load_ours(name, imgsz)
            for mod in model.modules():  # dense blocks, stem and heads
                if hasattr(mod, "memory_efficient"):
                    mod.memory_efficient = memory_efficient
            size = cfg.image_size
            criterion = MultiBoxLoss()

            def step(x, targets):
                out = model(x)
                return criterion(out.bbox_regression, out.cls_logits, targets, model.anchors_cxcywh)["loss"]
        else:
            peer = Peer(name)
            model, size = peer.model, peer.size

            def step(x, targets):
                tv_targets = [{"boxes": t["boxes"] * size, "labels": t["labels"] + 1} for t in targets]
                return sum(model(list(x), tv_targets).values())
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        times, live = [], None
        for i in range(steps + 1):
            x = torch.randn(batch, 3, size, size, generator=g) * 50
            targets = []
            for _ in range(batch):
                xy = torch.rand(3, 2, generator=g) * 0.6
                wh = torch.rand(3, 2, generator=g) * 0.3 + 0.05
                targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 3, (3,), generator=g)})
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = step(x, targets)
            loss.backward()
            opt.step()
            if i > 0:
                times.append(time.perf_counter() - t0)
        peak_rss = _peak_rss_bytes()
        live = _live_peak_bytes(lambda: (opt.zero_grad(set_to_none=False), step(x, targets).backward()))
        queue.put({"step_s": statistics.median(times), "peak_rss": peak_rss, "peak_live": live})
    except Exception as e:  # noqa: BLE001 - reported to the parent as a failed probe
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _live_peak_bytes(fn) -> Optional[int]:
    """Peak bytes held by live allocations during ``fn()`` above what was live before it: glibc's
    ``mallinfo2`` (heap in use + mmapped) sampled after every tensor op (a dispatch mode). Unlike peak
    RSS it does not count memory that the allocator keeps after a free (fragmentation), so it is the
    activation memory the model itself needs. None where glibc's mallinfo2 is missing."""
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    class _Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Info
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        mi = libc.mallinfo2()
        return mi.uordblks + mi.hblkhd

    class _Peak(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    base = in_use()
    with _Peak() as mode:
        fn()
    return mode.peak - base


def _peak_rss_bytes() -> int:
    """Peak resident set of this process's own address space: ``VmHWM`` (Linux). ``ru_maxrss`` is not
    used where VmHWM exists: Linux carries it over from the forked parent across exec, so a child
    started from a large process would report at least the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_memory(kind: str, name: str, batch: int, steps: int, threads: int, memory_efficient: bool = False,
                 imgsz: Optional[int] = None, mmap_threshold: Optional[int] = None,
                 tune_allocator: bool = True) -> Dict[str, Any]:
    """Training cost per image: peak RSS at ``batch`` minus at batch 2 (fresh processes), divided by
    the batch difference; images/s from the step time at ``batch``; and the same difference of the
    live-tensor peak (``live_gb_per_image``, glibc's mallinfo2, independent of fragmentation).

    ``tune_allocator`` (default): the probes set glibc's mmap threshold as ``dsod train`` does on CPU
    (``engine.memory.tune_cpu_allocator``); False measures glibc's default allocator.
    ``mmap_threshold``: instead set ``MALLOC_MMAP_THRESHOLD_`` to this value for the probes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    res = {}
    for b in (2, batch):
        q = ctx.Queue()
        p = ctx.Process(target=_train_probe,
                        args=(kind, name, b, steps, threads, memory_efficient, imgsz, q, tune_allocator))
        old = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        if mmap_threshold:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = str(int(mmap_threshold))
        try:
            p.start()
        finally:
            if mmap_threshold:
                if old is None:
                    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
                else:
                    os.environ["MALLOC_MMAP_THRESHOLD_"] = old
        r = q.get()
        p.join()
        if "error" in r:
            return {"error": r["error"]}
        res[b] = r
    per_image = (res[batch]["peak_rss"] - res[2]["peak_rss"]) / (batch - 2)
    live = None
    if res[batch].get("peak_live") is not None and res[2].get("peak_live") is not None:
        live = (res[batch]["peak_live"] - res[2]["peak_live"]) / (batch - 2) / 1e9
    return {"memory_gb_per_image": per_image / 1e9, "live_gb_per_image": live, "malloc_mmap_threshold": mmap_threshold,
            "tuned_allocator": tune_allocator and not mmap_threshold, "peak_rss_gb": {str(k): v["peak_rss"] / 1e9 for k, v in res.items()},
            "step_ms": {str(k): v["step_s"] * 1e3 for k, v in res.items()},
            "train_ms_per_image": res[batch]["step_s"] * 1e3 / batch,
            "train_img_s": batch / res[batch]["step_s"]}


# ------------------------------------------------------------------------------------- main
def _split(v: Any) -> List[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(",") if s.strip() and s.strip().lower() != "none"]


def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on", "y")


def run_bench(opts: Dict[str, Any]) -> Dict[str, Any]:
    from .export import load_batch
    from .postprocess import PostProcessor

    allowed = {"model", "compare", "json", "batch", "runs", "backends", "imgsz", "data", "threads",
               "threads_sweep", "train", "train_steps"}
    bad = sorted(set(opts) - allowed)
    if bad:
        raise BenchError(f"unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(allowed))}")
    name = str(opts.get("model", "dsod300"))
    peers = _split(opts.get("compare", ",".join(PEERS)))
    backends = _split(opts.get("backends", ",".join(DEFAULT_BACKENDS)))
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
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
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

    workdir = Path(tempfile.mkdtemp(prefix="dsod-bench-"))
    entries: Dict[Tuple[str, str], Dict[str, Any]] = {}
    fns: Dict[Tuple[str, str], Callable[[torch.Tensor], Any]] = {}
    inputs: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor]] = {}
    for be in backends:
        fn, notes = _backend_runner(be, model, workdir, images[:16], imgsz)
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

    # Post-processing (batch 1; our PostProcessor, torchvision's postprocess_detections for peers).
    post = PostProcessor(variances=cfg.anchors.variances)
    with torch.inference_mode():
        out = model(x1)
    post_runners = {label: lambda: post(out.bbox_regression, out.cls_logits, model.anchors_cxcywh, [(480, 640)])}
    for p, peer in peer_objs.items():
        with torch.inference_mode():
            head, feats = peer.net(inputs[(p, "eager")][0])
        post_runners[p] = (lambda pe, x, h, f: (lambda: pe.postprocess(x, h, f)))(peer, inputs[(p, "eager")][0], head, feats)
    pp = interleaved(post_runners, runs)
    for k, e in entries.items():
        e["postprocess_ms_b1"] = pp[k[0]] * 1e3

    # Thread sweep on the fused backend.
    if _bool(opts.get("threads_sweep", True)) and "fused" in backends and (os.cpu_count() or 1) > 1:
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

    # Training: fresh processes (peak RSS is per process).
    training: Dict[str, Any] = {}
    if train in ("all", "ours"):
        steps = int(opts.get("train_steps", 3))
        for me in (False, True):
            key = f"{label}/{'memory_efficient' if me else 'standard'}"
            training[key] = train_memory("ours", name, batch, steps, threads, me, opts.get("imgsz"))
            _print_train(key, training[key])
        if train == "all":
            for p in peers:
                training[p] = train_memory("peer", p, batch, steps, threads)
                _print_train(p, training[p])
    report["training"] = training

    results: Dict[str, Dict[str, Any]] = {}
    for (m, be), e in entries.items():
        results.setdefault(m, {})[be] = e
    report["results"] = results
    report["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _print_table(report, label, peers, batch)
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float))
        os.replace(tmp, path)
        print(f"wrote {path}")
    return 0
