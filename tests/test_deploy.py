"""Kubernetes/KServe manifests (--deploy-dir) validated against Kubernetes' schemas, and the inference probe
they use against a real tritonserver, a dead Python stub included. No cluster runs here (docs/deploy.md)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import build_repo
from yolotriton.serve.deploy import DeployError, DeploySettings, render_deploy, storage_uri, validate_manifests
from yolotriton.build.repository import RepositorySettings
from yolotriton.serve.server import TritonServer

ROOT = Path(__file__).resolve().parent.parent
REPO = "s3://10.0.0.7:9000/models/yolov4/builds/20261126T120000Z-abc"


def load(directory, name):
    return [d for d in yaml.safe_load_all((directory / name).read_text()) if d]


def test_manifests_render_and_validate(tmp_path):
    out = tmp_path / "deploy"
    render_deploy(out, DeploySettings(model_repository=REPO, replicas=3),
                  RepositorySettings(detector_device="gpu", preprocess_device="gpu", detector_instances=2))
    assert validate_manifests(out) == 5  # Deployment, 2 Services, HPA, PDB (Kubernetes 1.31 schemas, strict)
    (dep,) = load(out, "deployment.yaml")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert f"--model-repository={REPO}" in c["args"] and "--cuda-memory-pool-byte-size=0:2147483648" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and dep["spec"]["replicas"] == 3
    assert c["command"] == ["/opt/yolotriton/serve_mps.sh"] and c["args"][0] == "tritonserver"  # MPS in the pod
    assert "COPY scripts/serve_mps.sh /opt/yolotriton/serve_mps.sh" in (out / "Dockerfile").read_text()
    two = tmp_path / "two"  # two GPUs per pod: a CUDA pool on each
    render_deploy(two, DeploySettings(model_repository=REPO, gpus=2),
                  RepositorySettings(detector_device="gpu", preprocess_device="gpu"))
    (c2,) = load(two, "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"]
    assert [a for a in c2["args"] if a.startswith("--cuda-memory")] == [
        f"--cuda-memory-pool-byte-size={i}:2147483648" for i in (0, 1)]
    assert c["envFrom"][0]["secretRef"]["name"] == "yolov4-s3"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][:4] == ["python3", "-m", "client", "probe"]
    headless, cluster = load(out, "services.yaml")
    assert headless["spec"]["clusterIP"] == "None" and cluster["spec"]["type"] == "ClusterIP"
    hpa, pdb = load(out, "autoscaling.yaml")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_time_per_request_us"
    assert hpa["spec"]["minReplicas"] == 3 and pdb["spec"]["minAvailable"] == 1
    rules = yaml.safe_load((out / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"][0]
    assert rules["name"]["as"] == "triton_queue_time_per_request_us"
    (isvc,) = load(out, "inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["storageUri"] == "s3://models/yolov4/builds/20261126T120000Z-abc"
    # the fields used exist in KServe's v1beta1 CRD (checked against its published schema: docs/deploy.md)
    assert set(model) <= {"modelFormat", "storageUri", "image", "args", "resources"}
    assert "onnxruntime-gpu" in (out / "Dockerfile").read_text() and "COPY client" in (out / "Dockerfile").read_text()
    assert "torch" not in (out / "Dockerfile").read_text()  # this GPU build's engine is ONNX Runtime
    assert "TORCHINDUCTOR_CACHE_DIR" not in (out / "deployment.yaml").read_text()
    cpu = tmp_path / "cpu"
    render_deploy(cpu, DeploySettings(model_repository=REPO), RepositorySettings())
    c = load(cpu, "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and validate_manifests(cpu) == 5
    assert "torch" not in (cpu / "Dockerfile").read_text()


def test_torch_engine_build_gets_its_packages_and_a_compile_cache_that_outlives_a_restart(tmp_path):
    """The GPU build's default engine needs torch, torchvision (onnx2torch imports it), onnx and onnx2torch in the
    serving image, or every pod serves on ONNX Runtime; its compiled kernels go to a volume of the pod."""
    out = tmp_path / "deploy"
    render_deploy(out, DeploySettings(model_repository=REPO),
                  RepositorySettings(detector_device="gpu", preprocess_device="gpu", engine="torch"))
    assert validate_manifests(out) == 5
    docker = (out / "Dockerfile").read_text()
    assert ('--index-url https://download.pytorch.org/whl/cu126 "torch==2.11.0" "torchvision==0.26.0"' in docker
            and '"onnx==1.23.2"' in docker and '--no-deps "onnx2torch==1.5.15"' in docker)
    pod = load(out, "deployment.yaml")[0]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cache = {e["name"]: e["value"] for e in c["env"]}["TORCHINDUCTOR_CACHE_DIR"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"] == {}  # on the node's disk, kept across the container's restarts


def test_invalid_manifest_is_caught(tmp_path):
    out = tmp_path / "deploy"
    render_deploy(out, DeploySettings(model_repository=REPO), RepositorySettings())
    text = (out / "deployment.yaml").read_text().replace("terminationGracePeriodSeconds: 40",
                                                          "terminationGracePeriodSecond: 40")
    (out / "deployment.yaml").write_text(text)
    with pytest.raises(DeployError, match="deployment.yaml: Deployment yolov4 is not valid Kubernetes"):
        validate_manifests(out)


def test_deploy_needs_an_object_store_repository_and_fails_before_building(tmp_path, capsys):
    t = time.monotonic()
    assert build_repo.main(["--output", str(tmp_path / "repo"), "--deploy-dir", str(tmp_path / "d")]) == 2
    assert "object storage" in capsys.readouterr().err and time.monotonic() - t < 30
    assert not (tmp_path / "repo").exists() and not (tmp_path / "d").exists()
    assert storage_uri("s3://bucket/a/b") == "s3://bucket/a/b"


def test_inference_probe_catches_a_dead_stub(built_repo, tmp_path):
    """Triton 2.51 keeps /v2/health/ready true after a Python stub dies; the probe the manifests use does not."""
    sys.path.insert(0, str(ROOT / "bench"))
    from procs import stub_pids

    def probe(server):
        return subprocess.run([sys.executable, "-m", "client", "probe", "--url", server.grpc_url, "--requests", "6"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    with TritonServer(built_repo, log_path=tmp_path / "tritonserver.log") as server:
        ok = probe(server)
        assert ok.returncode == 0, ok.stderr
        detector = [pid for pid, model in stub_pids(server.process.pid).items() if model == "yolov4_detector"]
        os.kill(detector[0], signal.SIGKILL)
        time.sleep(1)
        assert server.ready()  # what Triton says...
        dead = probe(server)
        assert dead.returncode == 1 and "probe failed" in dead.stderr  # ...and what an inference finds
