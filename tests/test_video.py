"""dsod predict on video: a real H.264 clip made from BCCD frames, decoded in a thread, every frame's
detections the same as the image path gives on that decoded frame, the annotated video readable,
and broken or missing sources one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import confident_dsod_nano

from dsod.cli import main
from dsod.model.checkpoint import model_payload, save_checkpoint

av = pytest.importorskip("av")
NAMES = ["Platelets", "RBC", "WBC"]


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    """12 frames (4 BCCD images, 3 frames each) at 10 frames/s, and a checkpoint for BCCD's classes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("video")
    path = root / "clip.mp4"
    out = av.open(str(path), mode="w")
    stream = out.add_stream(next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), rate=10)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
    for jpg in sorted((shared_data / "bccd" / "JPEGImages").glob("*.jpg"))[:4]:
        rgb = np.asarray(Image.open(jpg).convert("RGB").resize((640, 480)))
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    model = confident_dsod_nano(len(NAMES))
    ckpt = root / "best.pt"
    save_checkpoint(ckpt, model_payload(model, model.config, NAMES, None))
    return path, ckpt


def _decoded(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_every_frame_is_detected_as_the_image_path_would_and_written_out(clip, tmp_path, capsys):
    from dsod.inference.predict import Detector

    path, ckpt = clip
    assert main(["predict", f"source={path}", f"model={ckpt}", "backend=torch", "conf=0.3", "batch=4",
                 f"project={tmp_path}", "name=v", "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "12 frame(s) in " in out and "frames/s end to end" in out and "the network and selection alone" in out
    lines = [json.loads(ln) for ln in (tmp_path / "v" / "clip.jsonl").read_text().splitlines()]
    assert [ln["frame"] for ln in lines] == list(range(12))
    assert [ln["time"] for ln in lines] == pytest.approx([i / 10 for i in range(12)])
    frames = _decoded(path)
    want = Detector.load(ckpt, backend="torch", conf=0.3).predict(frames)
    for got, w in zip(lines, want):  # the same pixels, the same network: the same detections
        assert [d["label"] for d in got["detections"]] == w["labels"].tolist()
        assert [d["name"] for d in got["detections"]] == w["names"] and len(w["names"]) > 0
        np.testing.assert_allclose([d["score"] for d in got["detections"]], w["scores"].numpy(), atol=1e-4)
    written = _decoded(tmp_path / "v" / "clip.mp4")
    assert len(written) == 12 and written[0].shape == (480, 640, 3)
    assert np.abs(written[0].astype(int) - frames[0]).mean() > 1  # boxes drawn on it


def test_max_frames_and_a_truncated_file_keep_what_was_read(clip, tmp_path, capsys):
    path, ckpt = clip
    assert main(["predict", f"source={path}", f"model={ckpt}", "backend=torch", "max_frames=5", "save=false",
                 f"project={tmp_path}", "name=five", "progress=false"]) == 0
    assert len((tmp_path / "five" / "clip.jsonl").read_text().splitlines()) == 5
    capsys.readouterr()
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the moov index is at the end: FFmpeg cannot open it
    code = main(["predict", f"source={cut}", f"model={ckpt}", "backend=torch", f"project={tmp_path}",
                 "name=cut", "progress=false", "timeout=10"])
    cap = capsys.readouterr()
    if code == 0:  # a container FFmpeg can read part of: what was decoded is kept, the end said
        assert "the stream ended after" in cap.out or "frame(s) in" in cap.out
    else:
        err = cap.err.strip()
        assert code == 2 and "\n" not in err and "cut.mp4" in err and "Traceback" not in cap.err


@pytest.mark.parametrize("source,message", [("missing.mp4", "no such video file"),
                                            ("rtsp://127.0.0.1:9/none", "cannot open")])
def test_a_missing_file_or_an_unreachable_stream_is_one_line(clip, tmp_path, capsys, source, message):
    _, ckpt = clip
    src = str(tmp_path / source) if source.endswith(".mp4") else source
    assert main(["predict", f"source={src}", f"model={ckpt}", "backend=torch", f"project={tmp_path}",
                 "progress=false", "timeout=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
