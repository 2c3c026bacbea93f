"""The client library and CLI against the real embedded server."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client import (AsyncYoloClient, BadImage, ModelNotReady, RequestTimeout, ServerUnreachable, YoloClient)
from reference import SAME_BOX_ATOL_PX, SAME_SCORE_ATOL
from yolotriton.serve.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def close(d, box, score) -> bool:
    """A client Detection against a box and score: within reference.py's bound for two served answers."""
    return (abs(d.score - float(score)) <= SAME_SCORE_ATOL
            and max(abs(u - float(v)) for u, v in zip(d.box, box)) <= SAME_BOX_ATOL_PX)


def same(a, b) -> bool:
    """Two lists of Detections of one photo: same classes in the same order, each pair close()."""
    return len(a) == len(b) and all(
        x.class_id == y.class_id and x.label == y.label and close(x, y.box, y.score) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def grpc_client(server):
    with YoloClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def http_client(server):
    with YoloClient(server.http_url, protocol="http") as c:
        yield c


def test_model_info_comes_from_the_server(grpc_client, shared, built_repo):
    from yolotriton.build.repository import read_settings

    info = grpc_client.info
    assert info.labels == tuple(
        l.strip() for l in (shared / "coco.names").read_text().splitlines() if l.strip())
    assert (info.input_width, info.input_height) == (416, 416)
    assert info.max_batch_size == read_settings(built_repo).max_batch_size  # 8 on the CPU, 32 on a GPU
    assert (info.max_detections, info.max_pixels) == (100, 50_000_000)
    # one model (the GPU default) is called directly; a pipeline of several stays behind its ensembles
    one_model = not (built_repo / "yolov4_preprocess").exists()
    assert (info.entry, info.raw_entry) == (("yolov4_detector",) * 2 if one_model else ("yolov4", "yolov4_raw"))


def test_detect_equals_the_ensembles_raw_outputs(grpc_client, server, photos):
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    for photo in photos[:4]:
        data = np.array([[photo.read_bytes()]], dtype=object)
        inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(data)
        res = raw.infer("yolov4", [inp])
        n = res.as_numpy("num_detections")[0, 0]
        dets = grpc_client.detect(photo)
        assert len(dets) == n > 0 or photo.stem == "scream"
        # two requests: on a GPU they may meet instances with their own cuDNN algorithms (reference.assert_same)
        for d, b, s, c in zip(dets, res.as_numpy("boxes")[0], res.as_numpy("scores")[0], res.as_numpy("classes")[0]):
            assert d.class_id == int(c) and close(d, b, s), (d, c, s, b)
            assert d.label == grpc_client.info.labels[c]


def test_grpc_and_http_agree_for_paths_bytes_and_arrays(grpc_client, http_client, photos):
    photo = photos[1]
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    for image in (photo, photo.read_bytes(), rgb):
        assert same(grpc_client.detect(image), http_client.detect(image))


def test_batch_equals_single(grpc_client, photos):
    images = [p for p in photos] + [photos[0]] * 3  # 11 images: more than one max_batch_size request
    batch = grpc_client.detect_batch(images)
    assert all(same(b, grpc_client.detect(p)) for b, p in zip(batch, images)) and len(batch) == len(images)


def test_async_equals_sync_and_streams_with_bounded_concurrency(server, grpc_client, photos):
    expected = [grpc_client.detect(p) for p in photos]

    async def run(protocol, url):
        async with AsyncYoloClient(url, protocol=protocol) as c:
            single = [await c.detect(p) for p in photos]
            streamed = {}
            images = list(photos) + [b"not an image"]
            async for i, r in c.stream(images, concurrency=3):
                streamed[i] = r
            return single, streamed

    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        single, streamed = asyncio.run(run(protocol, url))
        assert all(same(a, b) for a, b in zip(single, expected))
        assert sorted(streamed) == list(range(len(photos) + 1))
        assert all(same(streamed[i], expected[i]) for i in range(len(photos)))
        assert isinstance(streamed[len(photos)], BadImage)


def test_bad_image_raises_typed_error_with_the_servers_message(grpc_client, http_client):
    for c in (grpc_client, http_client):
        with pytest.raises(BadImage, match="not a JPEG, PNG or BMP image"):
            c.detect(b"GIF89a not supported here")


def test_per_call_thresholds(grpc_client, photos):
    all_ = grpc_client.detect(photos[0])
    strict = grpc_client.detect(photos[0], score_threshold=0.8)
    assert 0 < len(strict) < len(all_) and all(d.score > 0.8 for d in strict)
    assert len(grpc_client.detect(photos[0], max_detections=2)) == 2


def test_unreachable_unknown_model_and_timeout(server, photos):
    dead = f"127.0.0.1:{free_port()}"
    for protocol in ("grpc", "http"):
        t = time.monotonic()
        with pytest.raises(ServerUnreachable):
            YoloClient(dead, protocol=protocol, retries=2, backoff=0.05).detect(photos[0])
        assert time.monotonic() - t < 10
        url = server.grpc_url if protocol == "grpc" else server.http_url
        with pytest.raises(ModelNotReady, match="unknown model"):
            YoloClient(url, model="nope", protocol=protocol).detect(photos[0])
        with pytest.raises(RequestTimeout):
            YoloClient(url, protocol=protocol, timeout=0.001, retries=0).detect(photos[0])


def test_retry_recovers_when_the_server_comes_up(built_repo, tmp_path, photos):
    """UNAVAILABLE is retried with backoff: a server that starts a moment later still answers the call. Its port
    opens once the models have loaded, which on a GPU includes the torch engine's compile (a minute or more):
    10 retries wait up to 256 s."""
    srv = TritonServer(built_repo, log_path=tmp_path / "late.log")
    starter = threading.Timer(1.0, srv.start)
    starter.start()
    try:
        dets = YoloClient(srv.grpc_url, retries=10, backoff=0.25).detect(photos[0])
        assert {d.label for d in dets} >= {"dog", "bicycle"}
    finally:
        starter.join()
        srv.stop()


def test_large_arrays_use_shared_memory_with_the_same_result(server):
    rgb = cv2.cvtColor(cv2.imread(str(ROOT.parent / "shared" / "darknet" / "dog.jpg")), cv2.COLOR_BGR2RGB)
    big = cv2.resize(rgb, None, fx=3, fy=3)  # 11.9 MB: above the 4 MB threshold
    with YoloClient(server.grpc_url) as shm_client, YoloClient(server.grpc_url, shared_memory="never") as plain:
        a = shm_client.detect(big)
        assert shm_client._shm is not None, "the shared-memory path was not taken"
        assert same(a, plain.detect(big)) and len(a) > 0
        status = grpcclient.InferenceServerClient(server.grpc_url).get_system_shared_memory_status(as_json=True)
        assert any(r["name"] == shm_client._shm[1] for r in status.get("regions", {}).values())
    assert shm_client._shm is None  # released on close


def test_cli_table_json_and_drawn_images(server, shared, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "client", "detect", str(shared / "dog.jpg"), str(bad), "--url",
                           server.grpc_url, "--json", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # one image failed
    result = json.loads(proc.stdout)
    labels = {d["label"] for d in result[str(shared / "dog.jpg")]["detections"]}
    assert {"dog", "bicycle", "truck"} <= labels
    assert "not a JPEG" in result[str(bad)]["error"]
    drawn = cv2.imread(result[str(shared / "dog.jpg")]["annotated"])
    assert drawn.shape == (576, 768, 3) and not np.array_equal(drawn, cv2.imread(str(shared / "dog.jpg")))
    table = subprocess.run([sys.executable, "-m", "client", "detect", str(shared / "dog.jpg"), "--url", server.http_url,
                            "--protocol", "http"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "dog" in table.stdout and "4 detections" in table.stdout
    down = subprocess.run([sys.executable, "-m", "client", "detect", str(shared / "dog.jpg"), "--url",
                           f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 2 and "ServerUnreachable" in down.stderr
