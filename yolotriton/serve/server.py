"""Serve stage: the real Triton Inference Server shipped in the nvidia-pytriton wheel, run without Docker.

Two entry points:
- `main()` is the `tritonserver` command installed in the venv. It takes tritonserver's own flags
  and execs the binary with the Python backend laid out for this interpreter and an explicit stub
  environment, so `tritonserver --model-repository model_repository` works as in NVIDIA's images.
- `TritonServer` starts/stops that command on free loopback ports (tests, benchmarks).

Three measured pitfalls are handled here rather than documented away:
- On a GPU host the server runs under an NVIDIA MPS control daemon of its own (mps.py), started
  before it and quit after it: without MPS the stubs' CUDA contexts time-slice the GPU (half the
  throughput). YOLOTRITON_MPS=off serves without it.
- The Python backend stub finds its packages by looking up `python3` on PATH (it reads that venv's
  pyvenv.cfg). The wrapper puts this venv first on PATH, whatever the caller's PATH.
- With numpy 2 in the stub's environment every Python-backend output arrives empty, without an
  error. The wrapper checks the environment's numpy and refuses to start when it is 2 or newer.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .mps import ENV_SWITCH as MPS_SWITCH
from .mps import MpsDaemon

DEFAULTS = {  # applied unless the caller passes the flag: loopback only, no remote model loading
    "--http-address": "127.0.0.1",
    "--grpc-address": "127.0.0.1",
    "--metrics-address": "127.0.0.1",
    "--model-control-mode": "none",
}
# Triton hands GPU tensors between ensemble steps through a CUDA memory pool per GPU (default 64 MiB).
# Measured on an H100: with the GPU preprocess at concurrency 32 the default pool ran out, Triton fell
# back to pinned host memory and the Python stubs failed to load those buffers. 2 GiB per GPU holds
# the tensors of several hundred requests in flight (a 416 image is 2 MB, a 608 one 4.4 MB + heads).
CUDA_POOL_BYTES = 2 << 30


def gpu_ids() -> list[int]:
    """The NVIDIA GPUs this process may use (device files, narrowed by CUDA_VISIBLE_DEVICES)."""
    ids = sorted(int(p.name[6:]) for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = list(range(len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])))[:len(ids)]
    return ids


class ServerError(RuntimeError):
    pass


def pytriton_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed in this environment (run `make`)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"{root}/bin/tritonserver is missing: reinstall nvidia-pytriton==0.7.0")
    return root


def stub_environment() -> Path:
    """The environment the Python backend stub runs in: this interpreter's venv."""
    return Path(sys.prefix)


def check_stub_numpy(env: Path) -> str:
    """numpy's version in the stub's environment; refuses numpy >= 2 (outputs silently come back empty)."""
    python = env / "bin" / "python3"
    proc = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServerError(f"the Python backend environment {env} cannot import numpy: {proc.stderr.strip()[-300:]}")
    version = proc.stdout.strip()
    if int(version.split(".")[0]) >= 2:
        raise ServerError(f"refusing to start: numpy {version} in the Python backend environment {env}; "
                          "with numpy 2 every Python-backend output comes back empty. Install numpy<2 (make).")
    return version


def backend_directory(env: Path) -> Path:
    """A backends/ folder whose python/ holds the backend library and the stub matching this Python."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    target = env / "lib" / "yolotriton-backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in [stub, *(root / "backends" / "python").glob("*.*")]:
        dst = target / src.name
        if src.is_file() and (not dst.exists() or dst.stat().st_size != src.stat().st_size):
            shutil.copy2(src, dst)
    return target.parent


def server_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment for the real tritonserver, with this project's defaults filled in."""
    env_dir = stub_environment()
    check_stub_numpy(env_dir)
    root = pytriton_root()
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    extra = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given]
    if "--cuda-memory-pool-byte-size" not in given:
        extra += [f"--cuda-memory-pool-byte-size={i}:{CUDA_POOL_BYTES}" for i in gpu_ids()]
    if "--backend-directory" not in given:
        extra.append(f"--backend-directory={backend_directory(env_dir)}")
    env = dict(os.environ)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(env_dir)
    env.pop("PYTHONHOME", None)
    libs = str(root.parent.parent / "nvidia_pytriton.libs")  # libcudart etc. that the binary and stub link to
    env["LD_LIBRARY_PATH"] = libs + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return [str(root / "bin" / "tritonserver"), *args, *extra], env


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print("tritonserver (yolotriton wrapper): runs nvidia-pytriton's Triton Inference Server with the Python "
              "backend environment of this venv, under an NVIDIA MPS daemon of its own on a GPU host "
              f"({MPS_SWITCH}=off: without).\nDefaults added unless given: "
              + " ".join(f"{k}={v}" for k, v in DEFAULTS.items()) + "\nTriton's own help follows.\n", flush=True)
    try:
        cmd, env = server_command(args)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    mps = MpsDaemon(gpu_ids())
    extra = mps.start()
    if not extra:  # nothing to stop afterwards: become the server
        os.execve(cmd[0], cmd, env)
    proc = subprocess.Popen(cmd, env={**env, **extra})
    forward = lambda signum, _frame: proc.send_signal(signum)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)  # Ctrl-C / kubelet's TERM go to the server, which drains and exits
    try:
        rc = proc.wait()
    finally:
        mps.stop()
    sys.exit(rc if rc >= 0 else 128 - rc)


# --------------------------------------------------------------------------- lifecycle for tests and benchmarks

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonServer:
    """A tritonserver process on free loopback ports; use as a context manager."""

    model_repository: Path | str  # a folder or an s3://[host:port/]bucket/path
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None  # default: a temporary file (its tail goes into a start-up error)
    http_port: int = 0  # 0: free loopback ports are picked (and picked again if a start loses the race)
    grpc_port: int = 0
    metrics_port: int = 0
    mps: str | None = None  # auto | off; None: $YOLOTRITON_MPS, default auto (on a GPU host with MPS installed)
    process: subprocess.Popen | None = None
    daemon: MpsDaemon | None = None

    def __post_init__(self):
        self._auto_ports = not (self.http_port or self.grpc_port or self.metrics_port)
        if self._auto_ports:
            self._pick_ports()

    def _pick_ports(self) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 600.0) -> "TritonServer":  # the torch engine compiles at load (docs/gpu-host.md)
        if self.log_path is None:
            import tempfile

            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        # A port picked free can be taken before tritonserver binds it (seen once in CI: an early exit).
        # With picked ports, an early exit is retried on new ones; ports the caller chose are kept.
        self.daemon = MpsDaemon(gpu_ids(), mode=self.mps)
        mps_env = self.daemon.start()
        for attempt in range(3 if self._auto_ports else 1):
            args = [f"--model-repository={self.model_repository}", f"--http-port={self.http_port}",
                    f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}", *self.extra_args]
            try:
                cmd, env = server_command(args)
            except ServerError:
                self.daemon.stop()
                raise
            with open(self.log_path, "w") as out:
                self.process = subprocess.Popen(cmd, env={**env, **mps_env}, stdout=out, stderr=subprocess.STDOUT)
            try:
                self.wait_ready(timeout)
                return self
            except ServerError as e:
                if not self._auto_ports or attempt == 2 or "before it was ready" not in str(e):
                    self.stop()
                    raise
                self._pick_ports()
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text()[-3000:] if self.log_path and self.log_path.exists() else ""
                raise ServerError(f"tritonserver exited with {self.process.returncode} before it was ready\n{log}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.daemon is not None:
            self.daemon.stop()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
