"""End to end through the real tritonserver (nvidia-pytriton's 2.51 binary) over gRPC and HTTP."""
from __future__ import annotations

import json
import os
import subprocess
import time
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from reference import OUTPUTS, assert_same, assert_same_detections, detections, infer_bytes, opencv_detect, opencv_net

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def grpc(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def http(server):
    return httpclient.InferenceServerClient(server.http_url)


def test_served_detections_match_opencv(grpc, photos, default_model):
    net = opencv_net(default_model.cfg, default_model.weights)
    total = 0
    for photo in photos:
        ours = detections(infer_bytes(grpc, grpcclient, [photo.read_bytes()]))
        ref = opencv_detect(net, cv2.imread(str(photo)), (416, 416))
        assert_same_detections(ours, ref, context=photo.name)
        total += len(ref[0])
    assert total >= 20


def test_batch_and_concurrency_give_the_same_answers(grpc, server, photos):
    blobs = [p.read_bytes() for p in photos[:6]]
    single = [infer_bytes(grpc, grpcclient, [b]) for b in blobs]
    batch = infer_bytes(grpc, grpcclient, blobs)
    for i, s in enumerate(single):
        assert_same({k: batch[k][i:i + 1] for k in OUTPUTS}, s, f"image {i} in a batch")

    def one(i):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        return i, infer_bytes(c, grpcclient, [blobs[i % len(blobs)]])

    with ThreadPoolExecutor(8) as pool:
        for i, r in pool.map(one, range(24)):
            assert_same(r, single[i % len(blobs)], f"concurrent request {i}")


def test_http_equals_grpc(grpc, http, photos):
    """The two protocols carry the same answer: equal to the bit on the CPU; on the GPU the two requests may land
    on instances whose torch engines benchmarked other cuDNN algorithms (H200: scores 2e-4 apart), so within
    assert_same's bounds."""
    blob = photos[0].read_bytes()
    a, b = infer_bytes(grpc, grpcclient, [blob]), infer_bytes(http, httpclient, [blob])
    assert_same(a, b, "http vs grpc")


def test_raw_image_entry_point(grpc, photos, built_repo):
    blob = photos[0].read_bytes()
    rgb = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)[None]
    inp = grpcclient.InferInput("RAW_IMAGE", list(rgb.shape), "UINT8")
    inp.set_data_from_numpy(rgb)
    raw = {k: v for k, v in ((k, grpc.infer("yolov4_raw", [inp]).as_numpy(k)) for k in OUTPUTS)}
    enc = infer_bytes(grpc, grpcclient, [blob])
    if json.loads((built_repo / "settings.json").read_text()).get("preprocess_device") == "gpu":
        # encoded images are decoded by nvJPEG there, raw arrays come decoded by libjpeg-turbo: other pixels,
        # so the detection tolerances apply (as against OpenCV), not the same-pixels ones
        assert_same_detections(detections(raw), detections(enc), context="raw entry vs encoded entry (GPU decode)")
    else:
        assert_same(raw, enc, "raw entry vs encoded entry")


def test_per_request_thresholds(grpc, photos):
    blob = photos[0].read_bytes()
    default = detections(infer_bytes(grpc, grpcclient, [blob]))
    strict = detections(infer_bytes(grpc, grpcclient, [blob], {"score_threshold": 0.7}))
    assert len(strict[1]) < len(default[1]) and (strict[1] > 0.7).all()
    top1 = infer_bytes(grpc, grpcclient, [blob], {"max_detections": 1})
    # within assert_same's 2e-3: on the GPU another instance may have benchmarked other cuDNN algorithms
    assert top1["num_detections"][0, 0] == 1 and abs(top1["scores"][0, 0] - default[1].max()) <= 2e-3
    with pytest.raises(InferenceServerException, match="max_detections must be 1..100"):
        infer_bytes(grpc, grpcclient, [blob], {"max_detections": 1000})


def bomb_png() -> bytes:
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = (12000).to_bytes(4, "big") + (10000).to_bytes(4, "big")  # claims 120 MP
    return bytes(data)


BAD = {
    "garbage": (b"\x00\x01 definitely not an image", "not a JPEG, PNG or BMP"),
    "empty": (b"", "empty image"),
    "bomb": (bomb_png(), "120,000,000 pixels, above the limit"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_image_is_invalid_arg_and_server_keeps_serving(grpc, server, photos, kind):
    data, message = BAD[kind]
    with pytest.raises(InferenceServerException) as e:
        infer_bytes(grpc, grpcclient, [data])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and message in e.value.message()
    assert server.ready() and detections(infer_bytes(grpc, grpcclient, [photos[0].read_bytes()]))[0].size


def test_truncated_jpeg_and_zero_sized_raw_image(grpc, photos):
    data = photos[0].read_bytes()
    with pytest.raises(InferenceServerException, match="truncated JPEG"):
        infer_bytes(grpc, grpcclient, [data[: len(data) * 2 // 3]])
    inp = grpcclient.InferInput("RAW_IMAGE", [1, 0, 5, 3], "UINT8")
    inp.set_data_from_numpy(np.zeros((1, 0, 5, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="zero size"):
        grpc.infer("yolov4_raw", [inp])


def test_bad_requests_fail_alone_within_a_dynamic_batch(server, photos):
    """Good and bad requests sent together (the dynamic batcher groups them): only the bad ones fail."""
    good = photos[0].read_bytes()
    expected = detections(infer_bytes(grpcclient.InferenceServerClient(server.grpc_url), grpcclient, [good]))
    jobs = [(good, None) if i % 3 else BAD[sorted(BAD)[i % len(BAD)]] for i in range(24)]

    def send(job):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            return job, detections(infer_bytes(c, grpcclient, [job[0]]))
        except InferenceServerException as e:
            return job, e

    with ThreadPoolExecutor(12) as pool:
        for (data, message), result in pool.map(send, jobs):
            if message is None:
                assert not isinstance(result, Exception), result
                np.testing.assert_allclose(result[1], expected[1], atol=2e-3)  # scores; see assert_same
            else:
                assert isinstance(result, InferenceServerException) and message in result.message()


def test_labels_and_limits_come_from_the_server(grpc):
    # the model that takes the images: yolov4_preprocess, or the detector where it is the whole pipeline (GPU)
    first = grpc.get_model_config("yolov4").config.ensemble_scheduling.step[0].model_name
    cfg = grpc.get_model_config(first).config
    assert cfg.parameters["max_pixels"].string_value == "50000000"
    assert grpc.get_model_config("yolov4").config.output[3].label_filename == "labels.txt"


def test_wrapper_works_from_a_shell_without_the_venv_on_path(built_repo, tmp_path, photos):
    """The stub must find the venv's numpy even when PATH does not lead to it."""
    from yolotriton.serve.server import free_port

    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "tritonserver"), "--model-repository", str(built_repo),
                             f"--http-port={http}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        res = infer_bytes(client, httpclient, [photos[0].read_bytes()])
        assert res["num_detections"][0, 0] > 0
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("tritonserver did not stop on SIGTERM:\n" + (tmp_path / "server.log").read_text()[-3000:])


def test_wrapper_refuses_numpy_2(tmp_path, built_repo):
    """A stub environment with numpy 2 makes every Python-backend output empty: the wrapper must refuse."""
    env_dir = tmp_path / "np2"
    venv.create(env_dir, with_pip=True)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "numpy==2.2.6"], check=True)
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-m", "yolotriton.serve.server", "--model-repository",
                           str(built_repo)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "refusing to start: numpy 2.2.6" in proc.stderr
