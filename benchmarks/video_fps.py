"""Frames/s of ``dsod predict`` on a video: end to end (decode, network, selection, and with
``save=true`` drawing and encoding) against the network and selection alone, per backend.

    PYTHONPATH=src python benchmarks/video_fps.py [shared=../shared/data] [model=dsod-tiny] [frames=200]

Writes a 640x480 H.264 clip of BCCD frames (each image held 4 frames) and a checkpoint of ``model``
with random weights (the most detections to draw: the worst case for drawing) to a temporary folder,
then runs ``dsod predict`` on it for each backend, with and without the annotated video.
docs/PERFORMANCE.md "Video sources" quotes it.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv):
    import av
    from PIL import Image

    from dsod import build_model
    from dsod.cli import main as dsod
    from dsod.model.checkpoint import model_payload, save_checkpoint

    opts = dict(a.split("=", 1) for a in argv)
    shared = Path(opts.get("shared", ROOT.parent / "shared" / "data"))
    frames = int(opts.get("frames", 200))
    root = Path(tempfile.mkdtemp(prefix="dsod-video-"))
    clip = root / "clip.mp4"
    out = av.open(str(clip), mode="w")
    stream = out.add_stream(next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), rate=25)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
    for jpg in sorted((shared / "bccd" / "JPEGImages").glob("*.jpg"))[: max(1, frames // 4)]:
        rgb = np.asarray(Image.open(jpg).convert("RGB").resize((640, 480)))
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    model = build_model(opts.get("model", "dsod-tiny"), num_classes=4)
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model_payload(model, model.config, ["a", "b", "c"], None))
    # warm-up: the first selection compiles the numba kernel (seconds), not what a stream pays per frame
    dsod(["predict", f"source={clip}", f"model={ckpt}", "backend=fused", "max_frames=8", "save=false",
          f"project={root}", "name=warm-up", "progress=false"])
    for backend in ("fused", "onnxruntime"):
        for save in ("false", "true"):
            dsod(["predict", f"source={clip}", f"model={ckpt}", f"backend={backend}", "batch=4", f"save={save}",
                  f"project={root}", f"name={backend}-{save}", "progress=false"])


if __name__ == "__main__":
    main(sys.argv[1:])
