"""The serving path's own NVIDIA MPS daemon (yolotriton/mps.py) and the per-GPU server flags.

MPS needs an NVIDIA GPU and driver, which this machine cannot have: here its control program is
FAKE_MPS_CONTROL, a clearly named stand-in that records how it was called and makes the control pipe as
the real one does. That tests the plumbing only (private folders, start before, quit after, the line when
it cannot start); the real daemon ran on the lent H200 (bench/gpu.py's served rows, docs/gpu-host.md).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from yolotriton.serve import mps

from yolotriton.serve import server

FAKE_MPS_CONTROL = """#!/usr/bin/env bash
# FAKE nvidia-cuda-mps-control for tests/test_mps.py: records its calls, makes/removes the control pipe
echo "$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY stdin=$( [ "$1" = -d ] || cat )" >> "$FAKE_MPS_RECORD"
if [ "$1" = -d ]; then touch "$CUDA_MPS_PIPE_DIRECTORY/control"; else rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"; fi
"""


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text(FAKE_MPS_CONTROL)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv(mps.ENV_SWITCH, raising=False)
    return record


def test_private_daemon_started_before_and_quit_after(fake_control):
    lines = []
    daemon = mps.MpsDaemon([0, 1], log=lines.append)
    env = daemon.start()
    pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
    assert pipe.is_dir() and (pipe / "control").exists() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
    assert str(pipe).startswith(os.path.realpath(os.environ.get("TMPDIR", "/tmp"))) or "yolotriton-mps-" in str(pipe)
    assert daemon.note.startswith("on") and "GPU(s) 0,1" in lines[0]
    daemon.stop()
    calls = fake_control.read_text().splitlines()
    assert calls[0].startswith(f"-d pipe={pipe}") and calls[1].startswith(f" pipe={pipe}") and "stdin=quit" in calls[1]
    assert not pipe.exists(), "the private folders go with the daemon"


def test_no_control_program_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv(mps.ENV_SWITCH, raising=False)
    lines = []
    assert mps.MpsDaemon([0], log=lines.append).start() == {}
    assert len(lines) == 1 and "not started" in lines[0] and "nvidia-cuda-mps-control" in lines[0]


def test_off_no_gpu_or_the_callers_daemon_start_nothing(fake_control, monkeypatch):
    assert mps.MpsDaemon([], log=print).start() == {}
    assert mps.MpsDaemon([0], log=print, mode="off").start() == {}
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/somewhere/else")
    d = mps.MpsDaemon([0], log=print)
    assert d.start() == {} and "caller's daemon" in d.note
    assert not fake_control.exists()  # the control program was never called


def test_every_gpu_gets_a_cuda_memory_pool(monkeypatch):
    """--host-gpus 2 serves on both: the wrapper gives each visible GPU Triton's CUDA pool (argument plumbing)."""
    monkeypatch.setattr(server, "gpu_ids", lambda: [0, 1])
    cmd, _ = server.server_command(["--model-repository=/nowhere"])
    pools = [a for a in cmd if a.startswith("--cuda-memory-pool-byte-size=")]
    assert pools == [f"--cuda-memory-pool-byte-size={i}:{server.CUDA_POOL_BYTES}" for i in (0, 1)]


def test_pod_entrypoint_starts_the_daemon_then_execs_the_server(fake_control, tmp_path, monkeypatch):
    """scripts/serve_mps.sh, the GPU pod's entrypoint: the daemon first, then the command it was given."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "serve_mps.sh"
    pipe = tmp_path / "mps" / "pipe"
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe))
    out = subprocess.run(["sh", str(script), "sh", "-c", "echo served with $CUDA_MPS_PIPE_DIRECTORY"],
                         capture_output=True, text=True, check=True).stdout
    assert "[mps] control daemon started" in out and f"served with {pipe}" in out and (pipe / "control").exists()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no control program: one line, and the server still starts
    out = subprocess.run(["sh", str(script), "echo", "served"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith("[mps] not started") and out.splitlines()[1] == "served"
