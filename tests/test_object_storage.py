"""The repository on S3-compatible storage: publish with the project, serve with tritonserver's own S3 client.

A real S3-compatible server runs on a free loopback port: moto's standalone server (`moto_server`, PyPI's
moto[server]). Credentials and endpoint are the standard AWS variables, for boto3 and Triton alike.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import pytest
import tritonclient.grpc as grpcclient

import build_repo
from reference import assert_same_detections, detections, infer_bytes, opencv_detect, opencv_net
from yolotriton.serve.publish import PublishError, publish
from yolotriton.serve.server import TritonServer, free_port


def start_moto(log_dir: Path, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_dir / f"moto-{port}.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server on 127.0.0.1:PORT, and the AWS variables pointing at it (restored afterwards)."""
    proc, endpoint = start_moto(tmp_path_factory.mktemp("moto"))
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    yield client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


def keys(client, prefix):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", []))


def test_published_repository_is_served_from_s3(s3, built_repo, photos, default_model, tmp_path):
    path = publish(built_repo, "s3://models/yolov4", log=lambda *_: None)
    host = os.environ["AWS_ENDPOINT_URL"].split("//")[1]
    assert path.startswith(f"s3://{host}/models/yolov4/builds/")  # Triton's form for a custom endpoint
    build = path.split(f"s3://{host}/models/")[1]
    stored = keys(s3, build)
    assert f"{build}/yolov4/1/.keep" in stored and f"{build}/yolov4_raw/1/.keep" in stored  # ensembles' 1/
    assert f"{build}/yolov4_detector/1/model.onnx" in stored
    latest = s3.get_object(Bucket="models", Key="yolov4/LATEST")["Body"].read().decode().strip()
    assert latest == build
    net = opencv_net(default_model.cfg, default_model.weights)
    with TritonServer(path, log_path=tmp_path / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for photo in photos[:4]:
            ours = detections(infer_bytes(client, grpcclient, [photo.read_bytes()]))
            assert_same_detections(ours, opencv_detect(net, cv2.imread(str(photo)), (416, 416)), context=photo.name)
    # a second publish is a new, complete prefix; LATEST moves only after it is written
    path2 = publish(built_repo, "s3://models/yolov4", log=lambda *_: None)
    assert path2 != path and keys(s3, path2.split(f"{host}/models/")[1]) and keys(s3, build) == stored


def test_cli_publishes_and_prints_the_serving_flag_last(s3, capsys, tmp_path):
    """--output s3://... with --deploy-dir: the manifests read exactly what was published."""
    import yaml

    assert build_repo.main(["--output", "s3://models/cli", "--deploy-dir", str(tmp_path / "deploy")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("--model-repository=s3://127.0.0.1:") and "/models/cli/builds/" in last
    dep = yaml.safe_load((tmp_path / "deploy" / "deployment.yaml").read_text())
    assert last in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def _refused(capsys, url) -> str:
    assert build_repo.main(["--output", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_destinations_are_refused_before_the_build_and_leave_nothing(s3, capsys, monkeypatch):
    assert "bucket 'nosuchbucket' does not exist" in _refused(capsys, "s3://nosuchbucket/x")
    s3.put_object(Bucket="models", Key="taken/notes.txt", Body=b"someone else's")
    assert "not this tool's builds" in _refused(capsys, "s3://models/taken")
    assert keys(s3, "taken/") == ["taken/notes.txt"]
    assert "give a prefix" in _refused(capsys, "s3://models")
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    t = time.monotonic()
    assert "cannot reach the S3 endpoint" in _refused(capsys, "s3://models/unreachable")
    assert time.monotonic() - t < 60


def test_refused_credentials_are_one_line(s3, capsys, monkeypatch, tmp_path):
    """A second moto server with its IAM checks on from the first request: keys it never issued are refused."""
    proc, endpoint = start_moto(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        err = _refused(capsys, "s3://models/x")
        assert "credentials were refused for bucket 'models' (403)" in err, err  # HEAD answers carry no code
    finally:
        proc.terminate()
        proc.wait(10)


def test_interrupted_upload_leaves_no_build_a_reader_could_load(s3, built_repo, monkeypatch):
    """A failure midway (here: the 5th upload) deletes what was written; LATEST is not touched."""
    import yolotriton.serve.publish as pub

    real = pub._client

    def failing():
        client = real()
        calls = {"n": 0}
        upload = client.upload_file

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 5:
                from botocore.exceptions import EndpointConnectionError

                raise EndpointConnectionError(endpoint_url="http://test")  # the network drops mid-publish
            return upload(*a, **k)
        client.upload_file = flaky
        return client

    monkeypatch.setattr(pub, "_client", failing)
    with pytest.raises(PublishError, match="cannot reach"):
        publish(built_repo, "s3://models/flaky", log=lambda *_: None)
    assert keys(s3, "flaky/") == []


# ------------------------------------------------------------------ replicas: one S3 repository, three servers

def served_count(server) -> int:
    """nv_inference_request_success for the ensemble, from the server's own metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("nv_inference_request_success{") and 'model="yolov4"' in line)


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.class_id == y.class_id and abs(x.score - y.score) <= 2e-3 and
                                    max(abs(u - v) for u, v in zip(x.box, y.box)) <= 0.5 for x, y in zip(a, b))


@pytest.mark.slow
def test_client_balances_replicas_and_survives_one_dying(s3, built_repo, photos, tmp_path):
    """Three tritonservers on one published repository; YoloClient("a,b,c") with gRPC round_robin; 320
    requests at concurrency 16 while replica b is SIGKILLed and later restarted on the same ports: every
    result correct, none lost, each replica served a share (its own metrics)."""
    import asyncio
    import threading

    from client import AsyncYoloClient, YoloClient

    path = publish(built_repo, "s3://models/replicas", log=lambda *_: None)
    servers = [TritonServer(path, log_path=tmp_path / f"triton-{i}.log") for i in range(3)]
    for s in servers:
        s.start()
    try:
        urls = ",".join(s.grpc_url for s in servers)
        with YoloClient(servers[0].grpc_url) as one:
            expected = [one.detect(p) for p in photos]
        images = [photos[i % len(photos)] for i in range(320)]
        done = threading.Event()
        shares = {}

        def chaos():
            time.sleep(4)
            shares["b before kill"] = served_count(servers[1])
            # SIGKILL, no graceful shutdown, to the server and its Python-backend stubs (a pod dies whole; the
            # stubs of a server killed alone would outlive the test)
            stubs = subprocess.run(["pgrep", "-P", str(servers[1].process.pid)], capture_output=True,
                                   text=True).stdout.split()
            servers[1].process.kill()
            servers[1].process.wait()
            for pid in stubs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(2)
            servers[1] = TritonServer(path, log_path=tmp_path / "triton-1b.log", http_port=servers[1].http_port,
                                      grpc_port=servers[1].grpc_port, metrics_port=servers[1].metrics_port)
            servers[1].start()
            done.set()

        async def run():
            results = {}
            async with AsyncYoloClient(urls, retries=6, backoff=0.25) as c:
                async for i, r in c.stream(images, concurrency=16):
                    results[i] = r
                done.wait(120)  # b is back up: the channel reconnects (backoff at most 2 s) and round_robin reaches it
                for round_ in range(5):  # bounded: 5 rounds of 24 requests
                    async for i, r in c.stream(images[:24], concurrency=8):
                        results[1000 + 100 * round_ + i] = r
                    if served_count(servers[1]) > 0:
                        break
            return results

        killer = threading.Thread(target=chaos)
        killer.start()
        results = asyncio.run(run())
        killer.join()
        assert sorted(k for k in results if k < 1000) == list(range(len(images)))  # none lost
        bad = [(k, r) for k, r in results.items() if isinstance(r, Exception) or
               not same(r, expected[(k if k < 1000 else k % 100) % len(photos)])]
        assert not bad, bad[:3]
        assert shares["b before kill"] > 0
        assert served_count(servers[0]) > 0 and served_count(servers[2]) > 0 and served_count(servers[1]) > 0
    finally:
        for s in servers:
            s.stop()


def test_unreachable_replica_in_the_list_is_skipped(s3, server, photos):
    from client import YoloClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with YoloClient(f"127.0.0.1:{closed},{server.grpc_url}") as c, YoloClient(server.grpc_url) as direct:
        for p in photos[:4]:
            assert same(c.detect(p), direct.detect(p))
    with pytest.raises(ValueError, match="balanced over gRPC only"):
        YoloClient(f"127.0.0.1:{closed},{server.http_url}", protocol="http")
