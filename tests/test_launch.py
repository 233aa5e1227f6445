"""The `dsod train` command's own process: the allocator it re-executes under and the CPU DDP workers
it starts (dsod.launch), driven as a user would, through `python -m dsod` in a subprocess."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dsod.engine.checkpoint import load_checkpoint
from dsod.engine.memory import find_jemalloc


def test_dsod_train_runs_cpu_ddp_workers_and_forwards_ctrl_c(shared_data, tmp_path):
    cmd = [sys.executable, "-m", "dsod", "train", f"data={shared_data / 'bccd'}", "model=dsod-nano", "batch=4",
           "iterations=500", "workers=0", "val=false", "plots=false", "progress=false", f"project={tmp_path}",
           "name=ddp", "save_interval=1", "max_images=8", "device=cpu", "precise_bn=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("DSOD_ALLOCATOR", "OMP_NUM_THREADS")}
    env["DSOD_CPU_PROCESSES"] = "2"
    from helpers import sigint_default

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=sigint_default)
    last = tmp_path / "ddp" / "weights" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not last.exists():
        proc.kill()
        pytest.fail(f"no checkpoint within 240 s (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # to the launcher only: it must pass it on to both workers
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    assert "2 DDP processes on gloo" in out
    args = yaml.safe_load((tmp_path / "ddp" / "args.yaml").read_text())
    assert args["world_size"] == 2 and args["batch"] == 2 and args["norm"] == "bn"
    assert args["effective_batch"] == 4 and args["threads"] == 1
    assert args["allocator"] == ("jemalloc" if find_jemalloc() else "glibc")
    ckpt = load_checkpoint(last)
    assert 0 < ckpt["iteration"] < 500 and ckpt["world_size"] == 2
    assert not list(last.parent.glob("*.tmp"))
