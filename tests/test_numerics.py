"""The numerics, allocator and thread settings a run picks, and that a library call never changes the
caller's process-wide settings."""

import dataclasses

import pytest
import torch
import yaml

from dsod.runtime import hardware
from dsod.runtime.allocator import JEMALLOC_CONF, active_allocator, allocator_env, find_jemalloc
from dsod.runtime.numerics import CHANNELS_LAST_CPU, decide_numerics

ZEN1 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
SAPPHIRE = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n"


def test_native_bf16_only_with_amx_or_avx512_bf16(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert not hardware.native_bf16(ZEN1)
    assert hardware.native_bf16(SAPPHIRE)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped to AVX2 kernels: bf16 is emulated
    assert not hardware.native_bf16(SAPPHIRE)


def test_cpu_numerics_follow_the_cpu_and_the_keys_override(monkeypatch):
    cpu = torch.device("cpu")
    for info, native in ((ZEN1, False), (SAPPHIRE, True)):
        monkeypatch.setattr(hardware, "_cpuinfo", lambda info=info: info)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        auto = decide_numerics(cpu)
        assert auto.bf16 is native and auto.amp is False and auto.channels_last is CHANNELS_LAST_CPU
        assert "override with bf16=" in auto.describe()
        assert decide_numerics(cpu, bf16=not native).bf16 is (not native)
        assert decide_numerics(cpu, channels_last=False).channels_last is False
    assert "bf16 autocast" in decide_numerics(cpu, bf16=True).describe()


def test_allocator_environments():
    assert allocator_env("glibc") == {}
    assert allocator_env("mmap1m") == {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    with pytest.raises(ValueError, match="valid: glibc, glibc-thp, mmap1m, mmap1m-thp, jemalloc"):
        allocator_env("tcmalloc")
    if find_jemalloc():
        env = allocator_env("jemalloc")
        assert "libjemalloc" in env["LD_PRELOAD"] and env["MALLOC_CONF"] == JEMALLOC_CONF
    else:
        with pytest.raises(FileNotFoundError, match="apt-get install libjemalloc2"):
            allocator_env("jemalloc")


def test_train_from_python_keeps_the_callers_process_settings(shared_data, tmp_path):
    """train() and cli.main() called from Python leave the allocator and thread count alone."""
    from dsod.cli import main

    before_threads, before_alloc = torch.get_num_threads(), active_allocator()
    code = main(["train", f"data={shared_data / 'bccd'}", "model=dsod-nano", "iterations=1", "batch=2",
                 "workers=0", "max_images=2", f"project={tmp_path}", "name=lib", "progress=false", "val=false",
                 "plots=false", "device=cpu", "precise_bn=false"])
    assert code == 0
    assert torch.get_num_threads() == before_threads and active_allocator() == before_alloc
    args = yaml.safe_load((tmp_path / "lib" / "args.yaml").read_text())
    assert args["allocator"] == before_alloc and args["threads"] == before_threads
    assert args["numerics"].startswith("numerics: ")


@pytest.mark.e2e
def test_bench_training_section_measures_each_configuration_in_fresh_processes():
    from dsod.bench.train import OLD_DEFAULT, training_section
    from dsod.engine.train_probe import default_train_config

    sec = training_section("dsod-nano", batch=8, steps=1, peers=[], cores=2, only=["channels_last"])
    res = sec["results"]
    assert set(res) == {"old_default", "new_default", "channels_last"}, res
    assert res["old_default"]["config"] == OLD_DEFAULT.label() == "mmap1m/nchw/fp32/1x1t"
    assert res["new_default"]["config"] == default_train_config(2).label()
    assert res["old_default"]["speedup_vs_old_default"] == 1.0
    assert res["channels_last"]["config"] == dataclasses.replace(OLD_DEFAULT, channels_last=True).label()
    ref = res["old_default"]["train_img_s"]
    for r in res.values():  # the derived figures follow from the measured ones; a torch process holds > 0.1 GB
        assert r["train_img_s"] * r["train_ms_per_image"] == pytest.approx(1000)
        assert r["speedup_vs_old_default"] == pytest.approx(r["train_img_s"] / ref)
        assert r["train_img_s_runs"] == [r["train_img_s"]] and r["peak_rss_gb"]["8"] > 0.1
