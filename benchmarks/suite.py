"""The suite benchmark: per real dataset of ../shared/data and at one time budget, (a) the one command
a new user runs, (b) a sweep of the settings a careful user would try at the same budget (its best is
the "oracle"), (c) Ultralytics YOLO11n from scratch at the same budget, the peer. Every arm is scored
by ``dsod val`` on the held-out split (test where the dataset has one, else val): VOC07 mAP@0.5 and
COCO AP, with the wall time and the decisions the run printed (args.yaml).

    PYTHONPATH=src python benchmarks/suite.py [time=10m] [datasets=all|bccd,chess_rf100,...]
        [arms=auto,sweep,yolo] [sweep="imgsz=416;imgsz=512;augment=ssd;model=dsod-nano"]
        [out=suite_results] [shared=../shared/data]

Resumable and shareable: each (dataset, arm) writes ``out/<dataset>/<arm>.json`` when it ends and is
skipped when that file exists, so the queue survives a session's end and two machines can split it.
``out/suite.md`` is the table (with the CPU named) after every arm.

The peer arm needs Ultralytics (AGPL-3.0: installed for this benchmark only, never imported by dsod):
``pip install --no-deps ultralytics ultralytics-platform && pip install opencv-python-headless
ultralytics-thop py-cpuinfo psutil polars requests`` (the headless OpenCV needs no libGL); it runs
offline (``YOLO_OFFLINE=1``). It trains on the same boxes: the dataset's records written as YOLO
labels beside links to its images; its predictions at conf 0.001 become a COCO-results file that
``dsod val detections=`` scores like ours.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name -> (data= relative to shared, or a YAML written here), scored split
DATASETS = {
    "bccd": ("bccd", "val"),  # BCCD's test split is held back (shared/data/README.md)
    "chess_rf100": ("chess_rf100/data.yaml", "test"),
    "coco128": ("coco128/object_detection/config.yaml", "val"),
    "bolts_washers": ("yaml:path: {shared}/bolts_washers/raw\ntrain: train/images\nval: valid/images\n"
                      "test: test/images\nnames: [Bolt, Bottle, Washer]\n", "test"),
    "cars_overhead": ("cars_overhead/data.yaml", "test"),
    "rice_pests": ("rice_pests/data.yaml", "test"),
    "thermal_cheetah_alt": ("thermal_cheetah_alt/data.yaml", "test"),
}
SWEEP = "imgsz=416;imgsz=512;augment=ssd;model=dsod-nano"


def _env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "YOLO_OFFLINE": "1"}


def _run(cmd: List[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env())
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {code}; see {log}")
    return time.time() - t0


def _score(data: str, split: str, out: Path, name: str, log: Path, model: Optional[str] = None,
           detections: Optional[str] = None) -> Dict[str, float]:
    js = out / f"{name}-metrics.json"
    what = [f"model={model}", "backend=fused"] if model else [f"detections={detections}"]
    _run([sys.executable, "-m", "dsod", "val", f"data={data}", f"split={split}", *what, "plots=false",
          f"project={out / 'runs'}", f"name={name}-val", "exist_ok=true", f"json={js}"], log)
    m = json.loads(js.read_text())
    return {"voc07_map50": m["voc07_map50"], "coco_ap": (m.get("coco") or {}).get("AP")}


def dsod_arm(data: str, split: str, out: Path, name: str, budget: str, extra: List[str]) -> Dict:
    import yaml

    log = out / f"{name}.log"
    wall = _run([sys.executable, "-m", "dsod", "train", f"data={data}", "model=dsod-tiny", f"time={budget}", *extra,
                 f"project={out / 'runs'}", f"name={name}", "exist_ok=true", "progress=false"], log)
    run = out / "runs" / name
    args = yaml.safe_load((run / "args.yaml").read_text())
    metrics = _score(data, split, out, name, log, model=str(run / "weights" / "best.pt"))
    return {**metrics, "train_seconds": round(wall, 1), "settings": extra, "decisions": args.get("decisions", []),
            "iterations": args.get("total_iterations"), "image_size": args.get("imgsz"),
            "model": args.get("model")}


def _yolo_dataset(data: str, root: Path) -> Path:
    """The dataset's records as a YOLO dataset (links to the images, labels from the records)."""
    from dsod.data import load_dataset

    spec = load_dataset(data)
    lines = {"names": list(spec.info.names), "path": str(root)}
    for split in spec.splits:
        if split == "trainval":
            continue
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for r in spec.records(split):
            stem = str(r.image_id).replace("/", "__")
            link = root / split / "images" / f"{stem}{r.path.suffix}"
            if not link.exists():
                link.symlink_to(r.path.resolve())
            rows = [f"{int(c)} {(b[0] + b[2]) / 2 / r.width:.6f} {(b[1] + b[3]) / 2 / r.height:.6f} "
                    f"{(b[2] - b[0]) / r.width:.6f} {(b[3] - b[1]) / r.height:.6f}"
                    for b, c, crowd in zip(r.boxes, r.labels, r.iscrowd) if not crowd]
            (root / split / "labels" / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
        lines[split] = f"{split}/images"
    import yaml
    (root / "data.yaml").write_text(yaml.safe_dump(lines))
    return root / "data.yaml"


def yolo_arm(data: str, split: str, out: Path, name: str, budget: str, imgsz: int = 640) -> Dict:
    """YOLO11n from scratch (``yolo11n.yaml``, its defaults) for ``budget``, scored by dsod val."""
    from dsod.engine.budget import parse_duration

    log = out / f"{name}.log"
    ydata = _yolo_dataset(data, out / f"{name}-yolo-data")
    hours = parse_duration(budget) / 3600
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom ultralytics import YOLO\n"
        f"m = YOLO('yolo11n.yaml')\n"
        f"m.train(data={str(ydata)!r}, time={hours!r}, imgsz={imgsz}, device='cpu', workers=0, "
        f"project={str(out / 'runs')!r}, name={name!r}, exist_ok=True, plots=False, amp=False, verbose=False)\n"
        f"best = Path({str(out / 'runs' / name)!r}) / 'weights' / 'best.pt'\n"
        "m = YOLO(str(best))\n"
        f"images = sorted(Path({str(out / f'{name}-yolo-data' / split / 'images')!r}).iterdir())\n"
        "dets = []\n"
        "for r in m.predict([str(p) for p in images], conf=0.001, max_det=300, imgsz="
        f"{imgsz}, device='cpu', verbose=False, stream=True):\n"
        "    image_id = Path(r.path).stem.replace('__', '/')\n"
        "    for (x1, y1, x2, y2), s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):\n"
        "        dets.append({'image_id': image_id, 'category_id': int(c), 'bbox': [x1, y1, x2 - x1, y2 - y1], "
        "'score': s})\n"
        f"Path({str(out / f'{name}-dets.json')!r}).write_text(json.dumps(dets))\n")
    wall = _run([sys.executable, "-c", script], log)
    metrics = _score(data, split, out, name, log, detections=str(out / f"{name}-dets.json"))
    return {**metrics, "train_seconds": round(wall, 1), "settings": [f"yolo11n.yaml imgsz={imgsz}"]}


def table(out: Path, budget: str) -> str:
    from dsod.runtime.hardware import cpu_id

    rows = [f"Suite at time={budget}, {cpu_id()}, 2 cores; VOC07 mAP@0.5 / COCO AP on the held-out split.", "",
            "| dataset | split | one command | best of the sweep (setting) | YOLO11n | one command's decisions |",
            "|---|---|---|---|---|---|"]
    for ds, (_, split) in DATASETS.items():
        arms = {p.stem: json.loads(p.read_text()) for p in sorted((out / ds).glob("*.json"))
                if not p.stem.endswith(("-metrics", "-dets"))}
        if not arms:
            continue

        def cell(r):
            return f"{r['voc07_map50']:.3f} / {r['coco_ap'] if r['coco_ap'] is None else round(r['coco_ap'], 3)}"
        auto = arms.get("auto")
        sweep = {k: v for k, v in arms.items() if k.startswith("sweep-")}
        best = max(sweep.items(), key=lambda kv: kv[1]["voc07_map50"]) if sweep else None
        yolo = arms.get("yolo11n")
        rows.append(f"| {ds} | {split} | {cell(auto) if auto else '-'} | "
                    f"{cell(best[1]) + ' (' + ' '.join(best[1]['settings']) + ')' if best else '-'} | "
                    f"{cell(yolo) if yolo else '-'} | "
                    f"{'; '.join(d[:80] for d in (auto or {}).get('decisions', [])[:3]) or '-'} |")
    md = "\n".join(rows) + "\n"
    (out / "suite.md").write_text(md)
    return md


def main(argv: List[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    budget = opts.get("time", "10m")
    shared = Path(opts.get("shared", ROOT.parent / "shared" / "data")).resolve()
    out = Path(opts.get("out", "suite_results")).resolve()
    names = list(DATASETS) if opts.get("datasets", "all") == "all" else opts["datasets"].split(",")
    arms = opts.get("arms", "auto,sweep,yolo").split(",")
    sweep = [s for s in opts.get("sweep", SWEEP).split(";") if s]
    for ds in names:
        source, split = DATASETS[ds]
        (out / ds).mkdir(parents=True, exist_ok=True)
        if source.startswith("yaml:"):
            yaml_path = out / ds / "data.yaml"
            yaml_path.write_text(source[5:].format(shared=shared))
            data = str(yaml_path)
        else:
            data = str(shared / source)
        jobs = []
        if "auto" in arms:
            jobs.append(("auto", lambda: dsod_arm(data, split, out / ds, "auto", budget, [])))
        if "sweep" in arms:
            for s in sweep:
                key = "sweep-" + s.replace("=", "-").replace(" ", "_")
                jobs.append((key, lambda s=s, key=key: dsod_arm(data, split, out / ds, key, budget, s.split())))
        if "yolo" in arms:
            jobs.append(("yolo11n", lambda: yolo_arm(data, split, out / ds, "yolo11n", budget)))
        for key, job in jobs:
            path = out / ds / f"{key}.json"
            if path.exists():
                continue
            print(f"{ds} {key} (time={budget}) ...", flush=True)
            try:
                result = job()
            except Exception as e:  # noqa: BLE001 - one arm failing does not stop the queue
                print(f"  failed: {e}", flush=True)
                continue
            path.write_text(json.dumps(result, indent=1))
            print(f"  VOC07 {result['voc07_map50']:.4f}  COCO AP {result['coco_ap']}  "
                  f"({result['train_seconds']:.0f} s)", flush=True)
            print(table(out, budget), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
