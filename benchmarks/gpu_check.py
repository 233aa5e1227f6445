"""One command that checks dsod on a machine with one CUDA GPU in a few minutes.

    PYTHONPATH=src python3 benchmarks/gpu_check.py [data=FOLDER] [json=gpu_check.json]
        [parts=tests,train,speed,ddp] [iterations=200] [batch=16] [workers=8] [keep=false]

1. tests: the suite's CUDA tests (``pytest -q -m cuda tests/test_cuda.py``: fp32 and AMP +
   channels_last parity with the CPU, the matcher and the loss without host synchronisation,
   post-processing).
2. train: DSOD300 from scratch, ``iterations`` steps at ``batch`` with AMP, through the Python API
   ``dsod.engine.trainer.train`` on the synthetic demo set (``dsod.data.synthetic``) or ``data=``:
   images/s (between the first and the last logged iteration, and overall), peak GPU memory per image
   (``torch.cuda.max_memory_allocated`` / batch) and whether the loss falls. Validation is off: the
   check measures training, and faster-coco-eval (COCO AP) may be missing.
3. speed: DSOD300 against torchvision's ssd300_vgg16 (random weights, 21 classes) at batch 1 and 8,
   fp32 (PyTorch's defaults, TF32 convolutions) and fp16 autocast + channels_last, network alone and
   with post-processing (NMS), in one process; the paper's 17.4 fps (DSOD300, Titan X) as reference.
4. ddp: ``torchrun --standalone --nproc_per_node=1 -m dsod train ... device=cuda`` for a few
   iterations (the launch path: process-group environment, LOCAL_RANK device, checkpoint).

Writes one JSON (after every part, so a killed run keeps what it measured), prints a summary and one
line per failed part (its traceback is in the JSON). Without a GPU it says so and exits 0. Needs only
torch, torchvision and the dsod dependencies; a part whose optional package is missing (pytest) is
skipped, saying so.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

PAPER_FPS = 17.4  # DSOD300 on a Titan X GPU (Shen et al., ICCV 2017)
DEFAULTS = {"data": None, "json": "gpu_check.json", "parts": "tests,train,speed,ddp", "iterations": "200",
            "batch": "16", "workers": "8", "keep": "false"}


class Skip(Exception):
    """A part that cannot run here (a missing optional package): reported, not a failure."""


def _env() -> Dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{path}" if path else str(SRC)}


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:] if text else ""


def _train_kwargs(want: Dict[str, Any]) -> Dict[str, Any]:
    """Only the keys this version of TrainArgs has (the trainer evolves beside this script)."""
    import dataclasses

    from dsod.engine.trainer import TrainArgs
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    return {k: v for k, v in want.items() if k in fields}


# ---------------------------------------------------------------------------------------------- parts
def part_tests(opts: Dict[str, Any], data: str, work: Path) -> Dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not installed")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", lines[-1] if lines else "")}
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    return {"ok": ok, "command": " ".join(cmd[1:]), "returncode": proc.returncode, "counts": counts,
            "summary": lines[-1] if lines else "", "output_tail": _tail(out),
            "error": None if ok else (lines[-1] if lines else f"pytest exited {proc.returncode}")}


def part_train(opts: Dict[str, Any], data: str, work: Path) -> Dict[str, Any]:
    import csv

    import torch
    import yaml

    from dsod.engine.trainer import train

    iterations, batch = int(opts["iterations"]), int(opts["batch"])
    kwargs = _train_kwargs(dict(
        data=data, model="dsod300", iterations=iterations, batch=batch, device="cuda", amp=True, val=False,
        plots=False, progress=False, project=str(work / "runs"), name="train", exist_ok=True,
        workers=int(opts["workers"]), val_interval=max(1, iterations // 10), precise_bn=False, seed=0,
        cache_dir=str(work / "cache")))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = train(**kwargs)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    run_dir = Path(out["run_dir"])
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    its = [int(r["iteration"]) for r in rows]
    times = [float(r["time_s"]) for r in rows]
    losses = [float(r["loss"]) for r in rows if r.get("loss") not in (None, "")]
    steady = (its[-1] - its[0]) * batch / (times[-1] - times[0]) if len(rows) > 1 and times[-1] > times[0] else None
    third = max(1, len(losses) // 3)
    falls = len(losses) >= 2 and statistics.mean(losses[-third:]) < statistics.mean(losses[:third])
    finite = all(l == l and abs(l) != float("inf") for l in losses)
    ok = out["iterations"] == iterations and finite and falls
    args_used = yaml.safe_load((run_dir / "args.yaml").read_text()) if (run_dir / "args.yaml").exists() else {}
    return {"ok": ok, "iterations": out["iterations"], "batch": batch, "seconds": round(wall, 1),
            "images_per_s_steady": None if steady is None else round(steady, 1),
            "images_per_s_overall": round(out["iterations"] * batch / wall, 1),
            "peak_gpu_memory_gb": round(peak / 1e9, 3), "peak_gpu_memory_gb_per_image": round(peak / 1e9 / batch, 3),
            "loss_at_logged_iterations": dict(zip(its, losses)), "loss_falls": falls,
            "skipped_steps": out.get("skipped_steps"), "validation": "off (val=false: training speed only)",
            "train_kwargs": kwargs, "args_yaml": args_used,
            "error": None if ok else f"loss {'does not fall' if not falls else 'not finite'}: {losses}"}


def _time(fn: Callable[[], Any], batch: int, iters: int, warmup: int) -> Dict[str, float]:
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    return {"fps": round(batch / dt, 2), "ms_per_batch": round(dt * 1e3, 3)}


def part_speed(opts: Dict[str, Any], data: str, work: Path) -> Dict[str, Any]:
    import torch

    from dsod import build_model
    from dsod.inference.postprocess.detection_output import PostProcessor

    torch.backends.cudnn.benchmark = True
    try:
        from torchvision.models.detection import ssd300_vgg16
    except ImportError as e:  # pragma: no cover - torchvision is a dependency
        raise Skip(f"torchvision detection models unavailable: {e}") from None
    ours = build_model("dsod300", num_classes=21).cuda().eval()
    peer = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).cuda().eval()
    post = PostProcessor()
    result: Dict[str, Any] = {
        "params_m": {"dsod300": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                     "ssd300_vgg16": round(sum(p.numel() for p in peer.parameters()) / 1e6, 2)},
        "note": "random weights; 'net' = the network alone, 'e2e' = + decoding and NMS (torchvision: its "
                "eval forward, with its input transform); fp32 uses PyTorch's defaults (TF32 convolutions "
                "on Ampere and later); fp16 = autocast + channels_last",
        "reference": {"paper_dsod300_fps": PAPER_FPS, "paper_gpu": "NVIDIA Titan X, Caffe"}}
    for batch in (1, 8):
        iters, warmup = (50, 10) if batch == 1 else (20, 5)
        x_ours = torch.randn(batch, 3, 300, 300, device="cuda") * 50  # BGR minus mean, as the model takes
        x_peer = torch.rand(batch, 3, 300, 300, device="cuda")  # RGB in [0, 1], as torchvision takes
        for mode in ("fp32", "fp16"):
            fmt = torch.channels_last if mode == "fp16" else torch.contiguous_format
            ours.to(memory_format=fmt)
            peer.to(memory_format=fmt)
            xo, xp = x_ours.contiguous(memory_format=fmt), x_peer.contiguous(memory_format=fmt)
            ctx = (lambda: torch.autocast("cuda", dtype=torch.float16, enabled=mode == "fp16"))

            def ours_net():
                with torch.no_grad(), ctx():
                    return ours(xo)

            def ours_e2e():
                with torch.no_grad(), ctx():
                    out = ours(xo)
                return post(out.bbox_regression, out.cls_logits, ours.anchors_cxcywh)

            def peer_net():
                with torch.no_grad(), ctx():
                    images, _ = peer.transform(list(xp))
                    return peer.head(list(peer.backbone(images.tensors).values()))

            def peer_e2e():
                with torch.no_grad(), ctx():
                    return peer(list(xp))

            for name, net, e2e in (("dsod300", ours_net, ours_e2e), ("ssd300_vgg16", peer_net, peer_e2e)):
                entry = result.setdefault(name, {}).setdefault(f"batch{batch}", {})
                entry[mode] = {"net": _time(net, batch, iters, warmup), "e2e": _time(e2e, batch, iters, warmup)}
    for batch in (1, 8):
        for mode in ("fp32", "fp16"):
            a, b = result["dsod300"][f"batch{batch}"][mode], result["ssd300_vgg16"][f"batch{batch}"][mode]
            result.setdefault("dsod_over_ssd_fps", {})[f"batch{batch}_{mode}"] = {
                k: round(b[k]["ms_per_batch"] / a[k]["ms_per_batch"], 3) for k in ("net", "e2e")}
    b1 = result["dsod300"]["batch1"]["fp32"]["e2e"]["fps"]
    result["dsod300_batch1_fp32_e2e_over_paper"] = round(b1 / PAPER_FPS, 2)
    return {"ok": True, **result}


def part_ddp(opts: Dict[str, Any], data: str, work: Path) -> Dict[str, Any]:
    from dsod.model.checkpoint import load_checkpoint

    iterations = 10
    keys = _train_kwargs(dict(data=data, model="dsod300", iterations=iterations, batch=8, device="cuda",
                              val=False, plots=False, progress=False, project=str(work / "runs"), name="ddp",
                              exist_ok=True, workers=min(4, int(opts["workers"])), precise_bn=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "dsod", "train",
           *[f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items()]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    last = work / "runs" / "ddp" / "weights" / "last.pt"
    ckpt = load_checkpoint(str(last)) if proc.returncode == 0 and last.exists() else {}
    ok = proc.returncode == 0 and ckpt.get("iteration") == iterations
    err_lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    return {"ok": ok, "command": "torchrun " + " ".join(cmd[3:]), "returncode": proc.returncode,
            "seconds": round(seconds, 1), "iteration": ckpt.get("iteration"), "world_size": ckpt.get("world_size"),
            "note": "one process: WORLD_SIZE=1, for which the trainer runs without a process group or DDP "
                    "wrapper (engine/distributed.py); this checks torchrun's launch path on CUDA",
            "output_tail": _tail(proc.stdout + proc.stderr),
            "error": None if ok else (err_lines[-1] if err_lines else f"exit {proc.returncode}")}


PARTS = {"tests": part_tests, "train": part_train, "speed": part_speed, "ddp": part_ddp}


# ---------------------------------------------------------------------------------------------- driver
def machine_info() -> Dict[str, Any]:
    import torch
    import torchvision
    props = torch.cuda.get_device_properties(0)
    optional = {m: importlib.util.find_spec(m) is not None
                for m in ("pytest", "onnxruntime", "faster_coco_eval", "pycocotools", "matplotlib")}
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "gpus": torch.cuda.device_count(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "optional_packages": optional}


def _summary_line(name: str, r: Dict[str, Any]) -> str:
    status = r.get("status", "?")
    head = f"  {name:<6} {status:<8} {r.get('wall_s', 0):6.1f} s  "
    if status == "skipped":
        return head + r["reason"]
    if status == "failed" and "traceback" in r:
        return head + r["error"]
    if name == "tests":
        return head + r.get("summary", "")
    if name == "train":
        losses = list(r.get("loss_at_logged_iterations", {}).values())
        return head + (f"{r['iterations']} it x {r['batch']}: {r['images_per_s_steady']} img/s steady "
                       f"({r['images_per_s_overall']} overall), peak {r['peak_gpu_memory_gb_per_image']} GB/image, "
                       f"loss {losses[0] if losses else '?'} -> {losses[-1] if losses else '?'}"
                       f"{'' if r.get('loss_falls') else ' (does NOT fall)'}")
    if name == "speed":
        d, s = r["dsod300"], r["ssd300_vgg16"]
        return head + "; ".join(
            f"b{b} {m}: DSOD300 {d[f'batch{b}'][m]['e2e']['fps']} fps vs ssd300_vgg16 {s[f'batch{b}'][m]['e2e']['fps']}"
            for b in (1, 8) for m in ("fp32", "fp16")) + f" (paper: DSOD300 {PAPER_FPS} fps on a Titan X)"
    if name == "ddp":
        return head + f"torchrun 1 process: iteration {r.get('iteration')}, exit {r.get('returncode')}"
    return head


def parse(argv: List[str]) -> Dict[str, Any]:
    opts = dict(DEFAULTS)
    for a in argv:
        if a in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        k, sep, v = a.partition("=")
        if not sep or k not in DEFAULTS:
            raise SystemExit(f"gpu_check: '{a}' is not one of the key=value settings {', '.join(DEFAULTS)}")
        opts[k] = v
    return opts


def main(argv: List[str]) -> int:
    opts = parse(argv)
    import torch
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): nothing to check; run it on a machine with one.")
        return 0
    parts = [p.strip() for p in opts["parts"].split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    report: Dict[str, Any] = {"machine": machine_info(), "options": opts, "parts": {}}
    out_path = Path(opts["json"])
    work = Path(tempfile.mkdtemp(prefix="dsod-gpu-check-"))
    t_all = time.perf_counter()
    print(f"gpu_check on {report['machine']['gpu']} (torch {torch.__version__}, CUDA {torch.version.cuda}); "
          f"work folder {work}", flush=True)
    try:
        data = opts["data"]
        if not data:
            from dsod.data.synthetic import make_synthetic_voc
            data = str(make_synthetic_voc(work / "data"))
            report["data"] = f"synthetic demo set (dsod.data.synthetic): {data}"
        else:
            report["data"] = data
    except Exception as e:  # noqa: BLE001
        report["data_error"] = traceback.format_exc()
        out_path.write_text(json.dumps(report, indent=2, default=str))
        shutil.rmtree(work, ignore_errors=True)
        print(f"FAILED data: {type(e).__name__}: {e}")
        return 1
    try:
        for name in parts:
            print(f"gpu_check: {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                r = PARTS[name](opts, data, work)
                r["status"] = "ok" if r.pop("ok") else "failed"
            except Skip as e:
                r = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # noqa: BLE001 - every part reports, the next one still runs
                r = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0],
                     "traceback": traceback.format_exc()}
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            report["parts"][name] = r
            torch.cuda.empty_cache()
            report["total_s"] = round(time.perf_counter() - t_all, 1)
            out_path.write_text(json.dumps(report, indent=2, default=str))
            try:
                print(_summary_line(name, r), flush=True)
            except Exception as e:  # noqa: BLE001 - a summary never hides the JSON
                print(f"  {name:<6} {r['status']:<8} (summary unavailable: {e!r}; see {out_path})", flush=True)
    finally:
        if opts["keep"].lower() not in ("1", "true", "yes"):
            shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, r in report["parts"].items() if r["status"] == "failed"]
    print(f"gpu_check: {len(parts) - len(failed)}/{len(parts)} parts ok in {report['total_s']} s; wrote {out_path}")
    for n in failed:
        print(f"FAILED {n}: {report['parts'][n].get('error') or 'see ' + str(out_path)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
