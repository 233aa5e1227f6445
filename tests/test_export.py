"""`dsod export`: ONNX parity with eager on real images (dynamic batch, decoded boxes, NMS), the ONNX
Runtime backend, and that the int8 model runs and detects. No timings here (see `dsod bench`)."""
import numpy as np
import pytest
import torch
from helpers import assert_norm_close, confident_dsod_nano

from dsod import build_model
from dsod.export import DecodedGraph, export_main, load_batch
from dsod.inference.postprocess.detection_output import PostProcessor
from dsod.inference.sessions import OrtSession, list_images, read_rgb
from dsod.model.checkpoint import model_payload, save_checkpoint

NAMES = ["WBC", "RBC", "Platelets"]


@pytest.fixture(autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # robust on a shared 2-core machine; equality checks only
    yield
    torch.set_num_threads(prev)


def _model(confident: bool = False):
    if confident:
        return confident_dsod_nano(len(NAMES))
    torch.manual_seed(0)
    model = build_model("dsod-nano", num_classes=len(NAMES) + 1)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def bccd_images(shared_data):
    return shared_data / "bccd" / "JPEGImages"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("export")
    model = _model(confident=True)
    ckpt = tmp / "best.pt"
    save_checkpoint(ckpt, model_payload(model, model.config, NAMES, None))
    images = shared_data / "bccd" / "JPEGImages"
    assert export_main({"model": str(ckpt), "format": "onnx", "data": str(images), "verify_n": 4,
                        "int8": True, "calib_n": 8}) == 0
    assert export_main({"model": str(ckpt), "nms": True, "out": str(tmp / "best-nms.onnx"),
                        "data": str(images), "verify_n": 2}) == 0
    return model, tmp


def test_onnx_matches_eager_on_real_images_with_dynamic_batch(exported, bccd_images):
    model, tmp = exported
    det = OrtSession(tmp / "best.onnx")
    assert det.image_size == 160 and det.names == NAMES and not det.has_nms
    ref = DecodedGraph(model).eval()
    for n in (1, 3):  # dynamic batch
        batch, _ = load_batch(str(bccd_images), n, 160)
        boxes, scores = det.predict(batch)
        with torch.no_grad():
            rb, rs = ref(torch.from_numpy(batch))
        assert boxes.shape == (n, model.anchors_cxcywh.shape[0], 4) and scores.shape[-1] == len(NAMES)
        # ONNX Runtime's kernels vs PyTorch's: norm-relative, as their summation orders differ per
        # CPU (measured on an AMD EPYC, AVX2: boxes 2e-8, scores 7e-8)
        assert_norm_close(boxes, rb.numpy(), 1e-5, "boxes")
        assert_norm_close(scores, rs.numpy(), 1e-5, "scores")


def test_onnx_backend_detections_match_eager_pipeline(exported, bccd_images):
    model, tmp = exported
    from dsod.data.preprocess import preprocess_batch
    from dsod.inference.predict import Detector

    rgb = [read_rgb(p) for p in list_images(bccd_images, limit=2)]
    det = Detector.load(tmp / "best.onnx", conf=0.3)
    assert det.backend.name == "onnxruntime" and det.names == NAMES
    got = det.predict(rgb)
    post = PostProcessor(score_thresh=0.3)
    x = preprocess_batch(rgb, 160)
    with torch.no_grad():
        want = post(*model(x), model.anchors_cxcywh, image_sizes=[im.shape[:2] for im in rgb])
    for g, w in zip(got, want):
        assert len(g["boxes"]) == len(w["boxes"]) > 0
        assert_norm_close(g["boxes"], w["boxes"], 1e-5, "boxes")  # measured: 2e-8
        assert_norm_close(g["scores"], w["scores"], 1e-5, "scores")
        assert g["labels"].tolist() == w["labels"].tolist()
        assert set(g["names"]) <= set(NAMES)


def test_onnx_nms_output(exported, bccd_images):
    model, tmp = exported
    det = OrtSession(tmp / "best-nms.onnx")
    assert det.has_nms
    batch, _ = load_batch(str(bccd_images), 2, 160)
    out = det.run(batch)
    sel = out["selected"]
    assert sel.ndim == 2 and sel.shape[1] == 3 and len(sel) > 0
    assert set(sel[:, 0].tolist()) <= {0, 1} and sel[:, 1].max() < len(NAMES)
    ref = DecodedGraph(model, nms=True).eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(batch))[2]
    a, b = {tuple(r) for r in sel.tolist()}, {tuple(r) for r in want.tolist()}
    assert len(a & b) / len(a | b) > 0.99


def test_int8_model_runs_and_detects(exported, bccd_images):
    model, tmp = exported
    from dsod.inference.predict import Detector

    q = OrtSession(tmp / "best-int8.onnx")
    f = OrtSession(tmp / "best.onnx")
    assert "int8" in str(q.metadata.get("quantization", ""))
    batch, _ = load_batch(str(bccd_images), 4, 160)
    (qb, qs), (fb, fs) = q.predict(batch), f.predict(batch)
    # the quantised network computes nearly the same scores and boxes as fp32. Measured: mean |diff|
    # scores 0.0007, boxes 0.0001 on an AMD EPYC Zen 1 (AVX2, 7-bit weights, the default there; 8-bit
    # weights and its saturating u8 x s8 kernels make it 0.0019 / 0.0003, see export.quantize_int8);
    # on an AMD EPYC Zen 4 (VNNI, 8-bit weights by default) ...
    assert np.corrcoef(qs.ravel(), fs.ravel())[0, 1] > 0.9999
    assert np.abs(qs - fs).mean() < 0.0015 and np.abs(qb - fb).mean() < 0.0002
    # ... and Detector on the int8 file is exactly the one selection on that network's outputs (the
    # pixels preprocessed as dsod val does), with the class names of the labels
    from dsod.data.preprocess import preprocess_batch

    rgb = [read_rgb(p) for p in list_images(bccd_images, limit=2)]
    det = Detector.load(tmp / "best-int8.onnx", conf=0.3)
    assert det.backend.name == "onnxruntime-int8"
    qb, qs = q.predict(preprocess_batch(rgb, 160).numpy())
    want = PostProcessor(score_thresh=0.3).select(torch.from_numpy(qb), torch.from_numpy(qs),
                                                   [im.shape[:2] for im in rgb])
    for g, w in zip(det.predict(rgb), want):
        assert len(w["scores"]) > 0 and torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["scores"], w["scores"], rtol=0, atol=0)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=0, atol=1e-4)  # pixels
        assert g["names"] == [NAMES[i] for i in g["labels"].tolist()]


def test_export_errors_are_one_line(tmp_path, capsys):
    from dsod.cli import main
    from dsod.export import ExportError

    with pytest.raises(ExportError, match="not a preset nor a checkpoint"):
        export_main({"model": str(tmp_path / "nope")})
    with pytest.raises(ExportError, match="only onnx"):
        export_main({"model": "dsod-nano", "format": "tflite"})
    with pytest.raises(ExportError, match="unknown key"):
        export_main({"model": "dsod-nano", "colour": "red"})
    # the CLI parses every value before the (slow) export, with the same schema as every command
    for arg, msg in (("reduce_range=maybe", "reduce_range=maybe is not valid: expected true or false"),
                     ("colour=red", "unknown key 'colour'"), ("verify_n=0", "verify_n=0 is not valid"),
                     ("calib_method=best", "calib_method=best is not valid; choose one of")):
        assert main(["export", "model=dsod-nano", "int8=true", arg, f"out={tmp_path / 'm.onnx'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_export_names_an_unreadable_verification_image(tmp_path, bccd_images):
    from dsod.export import ExportError

    src = sorted(bccd_images.glob("*.jpg"))[0].read_bytes()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "ok.jpg").write_bytes(src)
    (tmp_path / "imgs" / "half.jpg").write_bytes(src[: len(src) // 2])
    with pytest.raises(ExportError, match=r"half\.jpg: truncated or corrupt image data"):
        export_main({"model": "dsod-nano", "out": str(tmp_path / "m.onnx"), "data": str(tmp_path / "imgs")})
    with pytest.raises(FileNotFoundError, match="no image files in this folder"):
        export_main({"model": "dsod-nano", "out": str(tmp_path / "m.onnx"), "data": str(tmp_path)})


def test_exported_graph_keeps_pre_activations_as_depthwise_convs(exported):
    """The fused graph's pre-activation BN+ReLU over shared inputs exports as depthwise 1x1 Conv + ReLU
    (ONNX Runtime stays in its blocked layout; int8 gets one QLinearConv), not Mul + Add."""
    import onnx

    _, tmp = exported
    g = onnx.load(str(tmp / "best.onnx")).graph
    backbone = [n for n in g.node if "/backbone/" in n.name or "/neck/" in n.name]
    assert not [n.name for n in backbone if n.op_type in ("Mul", "Add", "BatchNormalization")]

    def is_affine(n):
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        return n.op_type == "Conv" and a.get("group", 1) > 1 and list(a.get("kernel_shape", [])) == [1, 1]
    # dsod-nano: one per dense layer (3+4+4+4), one per transition (4), and the neck's reused halves
    assert sum(map(is_affine, backbone)) >= 19
    int8 = onnx.load(str(tmp / "best-int8.onnx"))
    from dsod.export import weight_bits

    meta = {p.key: p.value for p in int8.metadata_props}
    # the weight width follows the CPU: 8 bits with VNNI/AMX, 7 without (AVX2's saturating kernels)
    assert f"{weight_bits()}-bit weights" in meta["quantization"] and meta["weight_bits"] == str(weight_bits())


def test_int8_keeps_named_parts_in_float(exported, bccd_images, tmp_path):
    import onnx

    from dsod.export import ExportError, quantize_int8

    _, tmp = exported
    calib, _ = load_batch(str(bccd_images), 2, 160, seed=1)
    out = quantize_int8(tmp / "best.onnx", tmp_path / "mixed.onnx", calib, keep_fp32=["/stem/"])
    g = onnx.load(str(out)).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    stem = [n for n in convs if "/stem/" in n.name]
    assert stem and not any(i in dq_out for n in stem for i in n.input)          # float weights and input
    assert all(n.input[1] in dq_out for n in convs if "/blocks." in n.name)      # the rest is int8
    with pytest.raises(ExportError, match="int8_keep_fp32: /stme/ matches no node"):
        quantize_int8(tmp / "best.onnx", tmp_path / "typo.onnx", calib, keep_fp32=["/stme/"])


def test_int8_isa_flags_are_read_from_cpuinfo():
    from dsod.runtime.hardware import int8_bf16_isa

    zen1 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    sapphire = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n"
    assert int8_bf16_isa(zen1) == []
    assert int8_bf16_isa(sapphire) == ["avx512_vnni", "amx_int8", "avx512_bf16", "amx_bf16"]
    assert int8_bf16_isa("no flags line") is None
