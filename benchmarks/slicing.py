"""Sliced inference against whole images: VOC07 mAP@0.5 (``dsod val split=... slice=...``) and the
median time per image (``Detector.predict_arrays``, warmed up, the settings alternating image by
image), for a trained checkpoint on a dataset's split.

    PYTHONPATH=src python benchmarks/slicing.py CKPT DATA [split=test] [slices=false,1024,700]
        [backend=fused] [images=10] [json=out.json]

docs/PERFORMANCE.md "Sliced inference" quotes it.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv):
    from dsod.cli import main as dsod
    from dsod.data import load_dataset, load_image
    from dsod.inference.predict import Detector
    from dsod.runtime.hardware import cpu_id

    ckpt, data, opts = argv[0], argv[1], dict(a.split("=", 1) for a in argv[2:])
    split, backend = opts.get("split", "test"), opts.get("backend", "fused")
    slices = opts.get("slices", "false,1024,700").split(",")
    out = Path(tempfile.mkdtemp(prefix="dsod-slicing-"))
    report = {"checkpoint": ckpt, "data": data, "split": split, "backend": backend, "cpu": cpu_id(), "rows": {}}
    for s in slices:
        js = out / f"{s}.json"
        dsod(["val", f"data={data}", f"split={split}", f"model={ckpt}", f"backend={backend}", f"slice={s}",
              "plots=false", f"project={out}", f"name=v{s}", f"json={js}"])
        m = json.loads(js.read_text())
        report["rows"][s] = {"voc07_map50": m["voc07_map50"], "coco_ap": m["coco"]["AP"]}
    records = load_dataset(data).records(split)[: int(opts.get("images", 10))]
    images = [load_image(r.path) for r in records]
    dets = {s: Detector.load(ckpt, backend=backend, slice=s, log=lambda *_: None) for s in slices}
    for d in dets.values():
        d.log = lambda *_: None
        d.predict_arrays(images[:1])  # warm-up
    times = {s: [] for s in slices}
    for im in images:
        for s, d in dets.items():
            t = time.perf_counter()
            d.predict_arrays([im])
            times[s].append(time.perf_counter() - t)
    for s in slices:
        report["rows"][s]["ms_per_image"] = round(1e3 * statistics.median(times[s]), 1)
        r = report["rows"][s]
        print(f"slice={s:6s} VOC07 mAP@0.5 {r['voc07_map50']:.4f}  COCO AP {r['coco_ap']:.4f}  "
              f"{r['ms_per_image']:.0f} ms/image", flush=True)
    if opts.get("json"):
        Path(opts["json"]).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
