"""Training memory: the live-tensor probe of `dsod bench`'s training section (engine/train_probe.py)
and the memory-efficient gate (model/checkpointing.py) measured with it."""
import sys

import pytest
import torch

from dsod.engine.train_probe import live_peak_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallinfo2 is Linux-only")
def test_live_peak_grows_with_the_temporary_tensors():
    live_peak_bytes(lambda: torch.ones(4).sum())  # first use: one-off lazy initialisations
    small = live_peak_bytes(lambda: torch.ones(4 << 20).sum())  # a 16 MiB temporary
    large = live_peak_bytes(lambda: torch.ones(16 << 20).sum())  # a 64 MiB temporary
    assert abs(small - (16 << 20)) < 4 << 20 and abs(large - (64 << 20)) < 4 << 20


def _recomputing_model(memory_efficient: bool, seed_model=None):
    """dsod-nano at 64 px, float64 (gradients compare without reordering noise: in float32 the conv
    weights right before a BN, whose gradients nearly cancel, differ by up to 3% of their norm), whose
    BN layers log, per forward, whether it was a checkpoint's re-run."""
    from dsod import build_model
    from dsod.model.checkpointing import in_recomputation

    torch.manual_seed(0)
    model = build_model("dsod-nano", image_size=64, memory_efficient=memory_efficient).double().train()
    if seed_model is not None:
        model.load_state_dict(seed_model.state_dict())
    model.bn_reruns = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda *_: model.bn_reruns.append(in_recomputation()))
    return model


def test_memory_efficient_gate_recomputes_in_training_only(monkeypatch):
    """What the gate controls, not just equal numbers (equal whether or not it recomputes): on, a
    training step runs the dense layers under torch.utils.checkpoint, re-runs their BN/ReLU in backward
    and holds about half the activation memory; off, or on in eval or without grad, the plain forward
    runs. Gradients are the same either way."""
    import torch.utils.checkpoint as tuc

    calls, real = [], tuc.checkpoint

    def counting_checkpoint(*args, **kwargs):  # checkpointing.py imports it at call time: this one runs
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tuc, "checkpoint", counting_checkpoint)
    plain = _recomputing_model(False)
    gated = _recomputing_model(True, seed_model=plain)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 50

    def step(model):
        out = model(x)
        (out.bbox_regression.square().sum() + out.cls_logits.square().sum()).backward()

    peaks = {}
    for model in (plain, gated):
        step(model)  # the first step pays one-off initialisations (and moves both BNs' statistics alike)
        model.zero_grad()
        calls.clear()
        model.bn_reruns.clear()
        peaks[model] = live_peak_bytes(lambda: step(model))
        if model is plain:
            assert not calls and not any(model.bn_reruns)
        else:
            assert len(calls) > 0 and sum(model.bn_reruns) > 0  # checkpointed, and BN re-run in backward
    for (n, p), q in zip(plain.named_parameters(), gated.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-7, atol=1e-9, msg=n)
    if sys.platform.startswith("linux") and peaks[plain] is not None:
        assert peaks[gated] < 0.75 * peaks[plain], peaks  # measured 6.1 vs 11.4 MB: 0.53

    # the gate is off in eval and without grad: the plain forward, the same outputs, no checkpoint
    calls.clear()
    for train, grad in ((False, True), (True, False)):
        plain.train(train), gated.train(train)
        with torch.set_grad_enabled(grad):
            assert torch.equal(gated(x).cls_logits, plain(x).cls_logits)
        assert not calls, (train, grad)
