"""Every bad-input class at the server, interrupted builds, and the security defaults."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from yolotriton.serve.server import DEFAULTS, server_command

ROOT = Path(__file__).resolve().parent.parent


def send(client, data, dtype="BYTES", name="IMAGE", model="yolov4"):
    inp = grpcclient.InferInput(name, list(data.shape), dtype)
    inp.set_data_from_numpy(data)
    return client.infer(model, [inp])


@pytest.fixture(scope="module")
def grpc(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def test_wrong_dtype_shape_and_batch_are_invalid_arg(grpc, shared):
    good = (shared / "dog.jpg").read_bytes()
    limit = grpc.get_model_config("yolov4").config.max_batch_size  # 8 on the CPU, 32 on a GPU host
    cases = [
        (np.zeros((1, 1), np.float32), "FP32", "IMAGE", "yolov4", "data-type"),
        (np.array([[good, good]], dtype=object), "BYTES", "IMAGE", "yolov4", "shape"),
        (np.array([[good]] * (limit + 1), dtype=object), "BYTES", "IMAGE", "yolov4", f"batch-size must be <= {limit}"),
        (np.zeros((1, 20, 20), np.uint8), "UINT8", "RAW_IMAGE", "yolov4_raw", "shape"),
        (np.zeros((1, 20, 20, 3), np.float32), "FP32", "RAW_IMAGE", "yolov4_raw", "data-type"),
    ]
    for data, dtype, name, model, fragment in cases:
        with pytest.raises(InferenceServerException) as e:
            send(grpc, data, dtype, name, model)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
        assert fragment in e.value.message(), e.value.message()
    assert send(grpc, np.array([[good]], dtype=object)).as_numpy("num_detections")[0, 0] > 0


def test_real_100_megapixel_jpeg_is_refused_before_decoding(grpc):
    big = cv2.imencode(".jpg", np.full((10_000, 10_000, 3), 127, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])[1]
    t = time.perf_counter()
    with pytest.raises(InferenceServerException) as e:
        send(grpc, np.array([[big.tobytes()]], dtype=object))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "10000x10000 = 100,000,000 pixels, above the limit of 50,000,000" in e.value.message()
    assert time.perf_counter() - t < 5  # refused from the header: a full decode alone takes seconds here


def test_interrupted_build_leaves_previous_repository(tmp_path):
    """Ctrl-C (SIGINT) in the middle of the export: exit 130, old repository intact, nothing left beside it."""
    out = tmp_path / "model_repository"
    (out / "previous_model" / "1").mkdir(parents=True)
    (out / "previous_model" / "config.pbtxt").write_text('name: "previous_model"\n')
    # SIGINT back to its default in the build: a runner started as a shell's background job (nohup ... &) has it
    # ignored, and that is inherited; a terminal's foreground build, which this test plays, has it default.
    proc = subprocess.Popen([sys.executable, str(ROOT / "build_repo.py"), "--output", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "SavedModel written" in line:  # staging exists and tf2onnx is starting
            os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the whole process group
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_repository"]
    assert sorted(p.name for p in out.iterdir()) == ["previous_model"]


def test_server_defaults_are_loopback_and_no_model_control(grpc):
    cmd, _ = server_command(["--model-repository=/nonexistent"])
    for flag, value in DEFAULTS.items():
        assert f"{flag}={value}" in cmd
    opened, _ = server_command(["--model-repository=/x", "--http-address=0.0.0.0"])
    assert "--http-address=0.0.0.0" in opened and "--http-address=127.0.0.1" not in opened
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        grpc.load_model("yolov4_detector")


def test_no_pickle_anywhere_in_served_or_client_code():
    code = [p for d in ("yolotriton", "templates", "client") for p in (ROOT / d).rglob("*.py")]
    hits = [str(p) for p in code if re.search(r"\bpickle\b|allow_pickle", p.read_text())]
    assert not hits, hits
