"""backend=auto and the one preprocessing: `dsod val` and `dsod predict` see the same pixels and give the
same detections on every backend; exports are cached beside the checkpoint and rebuilt when it changes;
the int8 decision follows the accuracy recorded in the file."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import confident_dsod_nano

from dsod.cli import main
from dsod.model.checkpoint import model_payload, save_checkpoint

NAMES = ["Platelets", "RBC", "WBC"]  # as the VOC reader sorts them
IMAGES = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00003"]


def _confident_model():
    return confident_dsod_nano(len(NAMES))


@pytest.fixture(scope="module")
def small_voc(shared_data, tmp_path_factory):
    """Three BCCD images as a VOC dataset (links to the shared files) and a checkpoint for its classes."""
    root = tmp_path_factory.mktemp("voc")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for name in IMAGES:
        os.symlink(shared_data / "bccd" / "Annotations" / f"{name}.xml", root / "Annotations" / f"{name}.xml")
        os.symlink(shared_data / "bccd" / "JPEGImages" / f"{name}.jpg", root / "JPEGImages" / f"{name}.jpg")
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(IMAGES) + "\n")
    model = _confident_model()
    ckpt = root / "weights" / "best.pt"
    ckpt.parent.mkdir()
    save_checkpoint(ckpt, model_payload(model, model.config, NAMES, None))
    return root, ckpt


def _by_image(path):
    out = {}
    for d in json.loads(path.read_text()):
        out.setdefault(d["image_id"], []).append(d)
    return {k: sorted(v, key=lambda d: -d["score"]) for k, v in out.items()}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_val_and_predict_give_the_same_detections(small_voc, tmp_path, backend):
    root, ckpt = small_voc
    common = [f"model={ckpt}", f"backend={backend}", "conf=0.3", "batch=1", f"project={tmp_path}", "device=cpu"]
    assert main(["val", f"data={root}", "save_json=true", "plots=false", "workers=0", "name=val", *common]) == 0
    assert main(["predict", f"source={root / 'JPEGImages'}", "save=false", "name=pred", *common]) == 0
    val, pred = _by_image(tmp_path / "val" / "predictions.json"), _by_image(tmp_path / "pred" / "predictions.json")
    assert set(val) == set(pred) == set(IMAGES)
    for image in IMAGES:
        v, p = val[image], pred[image]
        assert len(v) == len(p) > 0, image
        assert [d["category_id"] for d in v] == [d["category_id"] for d in p]
        np.testing.assert_allclose([d["score"] for d in v], [d["score"] for d in p], atol=1e-5)
        np.testing.assert_allclose([d["bbox"] for d in v], [d["bbox"] for d in p], atol=1e-2)  # pixels


def test_preprocess_is_the_val_transform(shared_data):
    from torchvision import tv_tensors

    from dsod.data import eval_transform, load_image
    from dsod.data.preprocess import preprocess
    from dsod.inference.sessions import preprocess_rgb

    rgb = load_image(shared_data / "bccd" / "JPEGImages" / "BloodImage_00000.jpg")
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=rgb.shape[:2]),
              "labels": torch.zeros(0, dtype=torch.int64)}
    x, _ = eval_transform(300)(tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)), target)
    assert torch.equal(preprocess(rgb, 300), x)
    assert np.array_equal(preprocess_rgb(rgb, 300), x.numpy())


def test_auto_caches_the_export_and_rebuilds_it_when_the_checkpoint_changes(small_voc, tmp_path, capsys):
    from dsod.inference.backends import choose_backend
    from dsod.inference.sessions import read_metadata

    _, src = small_voc
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(src.read_bytes())
    choice = choose_backend(ckpt, "onnxruntime", "cpu")
    assert choice.path == tmp_path / "best.onnx" and choice.path.exists()
    assert "exporting" in capsys.readouterr().out
    stamp = choice.path.stat().st_mtime_ns
    assert choose_backend(ckpt, "onnxruntime", "cpu").path.stat().st_mtime_ns == stamp  # cached
    assert "exporting" not in capsys.readouterr().out
    model = _confident_model()
    model.head.loc[0][0].weight.data.mul_(1.01)
    save_checkpoint(ckpt, model_payload(model, model.config, NAMES, None))
    again = choose_backend(ckpt, "onnxruntime", "cpu")
    assert "changed" in capsys.readouterr().out
    from dsod.export import checkpoint_sha256

    assert read_metadata(again.path)["checkpoint_sha256"] == checkpoint_sha256(ckpt)


ZEN1 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"  # no int8 dot products
SAPPHIRE = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n"  # VNNI + AMX


def test_auto_serves_int8_only_within_the_measured_accuracy_loss(small_voc, tmp_path, monkeypatch):
    """auto builds the int8 file once (calibrated on the train split, its mAP change measured on val;
    8-bit weights with int8 dot products, 7-bit without) and serves it only if it lost <= 0.5 points
    and int8 pays here: always with VNNI/AMX, otherwise only if it timed >= 1.15x faster than the
    fastest fp32 engine on this CPU (timed once, remembered beside the files); else that engine.
    Both CPU kinds are given as /proc/cpuinfo texts, so every branch runs on every machine."""
    from dsod.export import has_int8_dot
    from dsod.export.build import add_metadata
    from dsod.export.quantize import weight_bits
    from dsod.inference.backends import choose_backend, openvino_available
    from dsod.inference.sessions import read_metadata
    from dsod.runtime import hardware
    root, src = small_voc
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(src.read_bytes())
    built_here = 8 if has_int8_dot() else 7
    choose_backend(ckpt, "auto", "cpu", data=str(root))
    int8 = tmp_path / "best-int8.onnx"
    meta = read_metadata(int8)
    assert {"map_fp32", "map_int8", "map_change", "weight_bits"} <= set(meta)
    assert meta["weight_bits"] == built_here
    assert meta["map_change"] == pytest.approx(meta["map_int8"] - meta["map_fp32"], abs=0.011)
    add_metadata(int8, {"map_change": -0.25})  # within the 0.5 points (the last entry wins)
    speed_file = tmp_path / "best.speed.json"
    fp32_names = ["onnxruntime", "openvino"] if openvino_available() else ["onnxruntime"]

    speed_file.unlink(missing_ok=True)  # timed by the first call on a CPU without int8 dot products
    monkeypatch.setattr(hardware, "cpu_id", lambda: "a CPU")  # the speed table's key, the same for both texts
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: SAPPHIRE)
    assert weight_bits() == 8
    choice = choose_backend(ckpt, "auto", "cpu", data=str(root))
    assert choice.name == "onnxruntime-int8" and "int8 dot products on this CPU" in choice.reason
    assert "-0.25 mAP points" in choice.reason and not speed_file.exists()  # served untimed

    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ZEN1)
    assert weight_bits() == 7
    timed = choose_backend(ckpt, "auto", "cpu", data=str(root))  # without them: timed here, and reused
    entry = json.loads(speed_file.read_text())["a CPU"]
    ms = entry["ms"]
    assert set(ms) == {*fp32_names, "onnxruntime-int8"}
    best = min(fp32_names, key=ms.get)
    assert timed.name == ("onnxruntime-int8" if ms[best] / ms["onnxruntime-int8"] >= 1.15 else best), ms
    for int8_ms, expected in ((ms[best] / 2, "onnxruntime-int8"), (ms[best], best)):
        speed_file.write_text(json.dumps({"a CPU": {**entry, "ms": {**ms, "onnxruntime-int8": int8_ms}}}))
        again = choose_backend(ckpt, "auto", "cpu", data=str(root))
        assert again.name == expected and "ms at batch 1" in again.reason, again

    add_metadata(int8, {"map_change": -2.0})  # a recorded loss beyond 0.5 points: fp32 on either CPU
    for info in (SAPPHIRE, ZEN1):
        monkeypatch.setattr(hardware, "_cpuinfo", lambda info=info: info)
        worse = choose_backend(ckpt, "auto", "cpu", data=str(root))
        assert worse.name == best and "lost 2.00 mAP points" in worse.reason
    if len(fp32_names) == 2:  # the fp32 engines are timed too, and the faster one serves
        entry = json.loads(speed_file.read_text())["a CPU"]
        for slow in fp32_names:
            speed_file.write_text(json.dumps({"a CPU": {**entry, "ms": {**entry["ms"], slow: 1e6}}}))
            other = next(k for k in fp32_names if k != slow)
            assert choose_backend(ckpt, "auto", "cpu", data=str(root)).name == other


def test_auto_without_onnxruntime_is_the_fused_path(small_voc, monkeypatch):
    import sys

    from dsod.inference.backends import choose_backend

    _, ckpt = small_voc
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    choice = choose_backend(ckpt, "auto", "cpu")
    assert choice.name == "fused" and "not installed" in choice.reason


def test_openvino_runs_the_onnxruntime_file_alike(small_voc, tmp_path, monkeypatch):
    """The openvino backend serves the same exported file as onnxruntime, with the same outputs; where
    openvino is not installed, asking for it is a one-line error and auto falls back to onnxruntime."""
    import sys

    from dsod.inference.backends import BackendError, choose_backend, open_runner

    _, src = small_voc
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(src.read_bytes())
    ov, ort = choose_backend(ckpt, "openvino", "cpu"), choose_backend(ckpt, "onnxruntime", "cpu")
    assert ov.path == ort.path
    x = torch.randn(2, 3, 160, 160) * 60
    (b1, s1), (b2, s2) = open_runner(ov, threads=1)(x), open_runner(ort, threads=1)(x)
    assert open_runner(ov).name == "openvino"
    torch.testing.assert_close(b1, b2, atol=1e-4, rtol=0)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=0)
    # under the jemalloc `dsod train`/`demo` preload OpenVINO aborts the process: not used there
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    with pytest.raises(BackendError, match="preloaded jemalloc"):
        choose_backend(ckpt, "openvino", "cpu")
    assert choose_backend(ckpt, "auto", "cpu").name != "openvino"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(BackendError, match="pip install openvino"):
        choose_backend(ckpt, "openvino", "cpu")
    # no dataset to measure int8 on and openvino gone: ONNX Runtime fp32, whatever the CPU
    assert choose_backend(ckpt, "auto", "cpu").name == "onnxruntime"


def test_backend_errors_are_one_line(small_voc, tmp_path, capsys):
    _, ckpt = small_voc
    assert main(["predict", f"model={tmp_path / 'none.pt'}", f"source={tmp_path}"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["predict", f"model={ckpt}", f"source={tmp_path}", "backend=tensorrt"]) == 2
    assert "backend=tensorrt is not valid" in capsys.readouterr().err
