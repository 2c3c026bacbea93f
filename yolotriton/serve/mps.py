"""NVIDIA MPS for one tritonserver: a control daemon of its own, started before the server and quit after it.

Entry point: `MpsDaemon(log).start()` -> environment variables for the server (empty when MPS is not
used), `.stop()` after the server exited. Used by the `tritonserver` wrapper (`make serve`) and by
`TritonServer` (tests, benchmarks), so a GPU host gets it without a hand step.

Why: every Python-backend instance is a process with its own CUDA context. Without MPS the GPU
time-slices between those contexts; under MPS their kernels share the GPU. Measured (docs/gpu-host.md):
about twice the served images/s on an H100 and an H200.

- The daemon is private: its pipe and log folders are a fresh temporary directory
  (CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY), handed to the server's environment, so it
  neither joins nor disturbs another MPS daemon on the host, and it is quit and removed with the server.
- Used when the host has an NVIDIA GPU, `nvidia-cuda-mps-control` is on PATH, YOLOTRITON_MPS is not
  "off" and the caller has not already pointed CUDA_MPS_PIPE_DIRECTORY at a daemon of its own (then
  that one is used as it is). When it cannot start, one line says why and the server runs without it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
ENV_SWITCH = "YOLOTRITON_MPS"  # auto (default) | off


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class MpsDaemon:
    def __init__(self, gpus: list[int], log=_stderr, mode: str | None = None):
        self.gpus, self.log = gpus, log
        self.mode = (mode or os.environ.get(ENV_SWITCH, "auto")).lower()
        self.folder: Path | None = None
        self.env: dict[str, str] = {}
        self.note = "off"

    def start(self) -> dict[str, str]:
        if self.mode == "off":
            self.note = f"off ({ENV_SWITCH}=off)"
            return {}
        if not self.gpus:
            self.note = "off (no GPU)"
            return {}
        if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
            self.note = f"the caller's daemon at {os.environ['CUDA_MPS_PIPE_DIRECTORY']}"
            return {}
        exe = shutil.which(CONTROL)
        if exe is None:
            self.note = f"off ({CONTROL} not found)"
            self.log(f"[mps] not started: {CONTROL} is not on PATH, so the GPU stubs' CUDA contexts time-slice the "
                     "GPU (about half the throughput); install the NVIDIA driver's MPS tools or set "
                     f"{ENV_SWITCH}=off to silence this")
            return {}
        self.folder = Path(tempfile.mkdtemp(prefix="yolotriton-mps-"))
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(self.folder / "log")}
        for p in self.env.values():
            os.makedirs(p, exist_ok=True)
        env = {**os.environ, **self.env}
        proc = subprocess.run([exe, "-d"], env=env, capture_output=True, text=True, timeout=30)
        control = self.folder / "pipe" / "control"
        deadline = time.monotonic() + 10
        while proc.returncode == 0 and not control.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.returncode != 0 or not control.exists():
            why = (proc.stderr or proc.stdout).strip()[-300:] or f"no control pipe at {control} after 10 s"
            self.log(f"[mps] not started: `{CONTROL} -d` failed ({why}); the server runs without MPS")
            self._remove()
            self.note = "off (the daemon failed to start)"
            return {}
        self.note = f"on (private daemon, {self.folder})"
        self.log(f"[mps] control daemon started for GPU(s) {','.join(map(str, self.gpus))}, pipe {self.env['CUDA_MPS_PIPE_DIRECTORY']}")
        return dict(self.env)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.env:
            return
        exe = shutil.which(CONTROL) or CONTROL
        try:  # quit waits for its clients; the server has exited, so they are gone
            subprocess.run([exe], input="quit\n", text=True, env={**os.environ, **self.env}, capture_output=True,
                           timeout=timeout)
        except (subprocess.TimeoutExpired, OSError) as e:
            self.log(f"[mps] the control daemon did not quit ({e})")
        self._remove()

    def _remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self.env = None, {}
