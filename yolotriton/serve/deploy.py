"""Deploy stage: Kubernetes manifests for N Triton replicas on one repository in object storage.

Entry points: `render_deploy(directory, DeploySettings, repo_settings)` writes, from templates/deploy/:
deployment.yaml (replicas, GPUs, s3 repository with credentials from a Secret, probes that run a real
inference), services.yaml (headless for gRPC client-side balancing + ClusterIP), autoscaling.yaml (an
HPA on Triton's queue time per request, and a PodDisruptionBudget), prometheus-adapter-rules.yaml (the
rule that feeds that HPA metric), inferenceservice.yaml (KServe, Triton runtime) and the serving image's
Dockerfile; `validate_manifests(directory)` checks every Kubernetes object against the pinned
Kubernetes version's schemas (kubernetes-validate), strictly. Written to a staging folder and swapped in.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

K8S_VERSION = "1.31.0"  # the schemas the manifests are validated against (kubernetes-validate)
MANIFESTS = ("deployment.yaml", "services.yaml", "autoscaling.yaml", "inferenceservice.yaml")
CRD_KINDS = {("serving.kserve.io/v1beta1", "InferenceService")}  # not in Kubernetes' own schemas


class DeployError(ValueError):
    pass


@dataclass
class DeploySettings:
    model_repository: str  # what tritonserver reads: s3://[host:port/]bucket/path
    image: str = ""  # default: yolotriton-NAME:NGC_TAG (built from the rendered Dockerfile)
    replicas: int = 2
    max_replicas: int = 8
    gpus: int = 1  # per pod
    cpu: str = "8"
    memory: str = "16Gi"
    secret: str = ""  # default: NAME-s3
    queue_target_us: int = 50_000  # HPA: scale out above 50 ms of queueing per request
    ngc_tag: str = "24.10-py3"

    def __post_init__(self):
        if not self.model_repository.startswith("s3://"):
            raise DeployError(f"--deploy-model-repository {self.model_repository!r}: replicas read one repository "
                              "from object storage, e.g. s3://bucket/path (publish with --output s3://...)")
        if not 1 <= self.replicas <= self.max_replicas:
            raise DeployError(f"replicas {self.replicas} must lie in 1..{self.max_replicas} (--max-replicas)")


def storage_uri(model_repository: str) -> str:
    """KServe's form: s3://bucket/path (its storage initializer takes the endpoint from the service account)."""
    parts = urlparse(model_repository)
    path = parts.path.lstrip("/")
    if ":" in parts.netloc:  # Triton's s3://host:port/bucket/path
        return f"s3://{path}"
    return f"s3://{parts.netloc}/{path}"


def render_deploy(directory: Path, d: DeploySettings, repo) -> list[Path]:
    from ..build.repository import templates

    directory = Path(directory).resolve()
    name = repo.name.replace("_", "-").lower()
    gpu = repo.detector_on_gpu
    ctx = {**asdict(d), "name": name, "ensemble": repo.name, "image": d.image or f"yolotriton-{name}:{d.ngc_tag}",
           "secret": d.secret or f"{name}-s3", "gpus": d.gpus if gpu else 0, "gpu": gpu,
           "torch": gpu and repo.engine == "torch",  # the torch engine's packages and its compile cache
           "min_replicas": d.replicas, "storage_uri": storage_uri(d.model_repository),
           "probe_requests": max(2, repo.detector_instances * 2),  # reach every detector instance
           # Triton's CUDA pool on each of the pod's GPUs (the wrapper does the same outside Kubernetes)
           "extra_args": [f"--cuda-memory-pool-byte-size={i}:2147483648" for i in range(d.gpus)]
           if repo.preprocess_device == "gpu" else []}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging-", dir=directory.parent))
    try:
        for template in sorted((Path(__file__).resolve().parents[2] / "templates" / "deploy").glob("*.j2")):
            (staging / template.stem).write_text(templates().get_template(f"deploy/{template.name}").render(**ctx))
        validate_manifests(staging)
        staging.chmod(0o755)
        old = directory.with_name(f".{directory.name}.old") if directory.exists() else None
        if old:
            directory.rename(old)
        staging.rename(directory)
        if old:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(directory.iterdir())


def documents(directory: Path):
    import yaml  # here, not at import: build_repo.py imports this module for DeployError on every build

    for name in MANIFESTS:
        for doc in yaml.safe_load_all((Path(directory) / name).read_text()):
            if doc:
                yield name, doc


def validate_manifests(directory: Path, version: str = K8S_VERSION) -> int:
    """Every Kubernetes object against the schemas of `version`, strictly (unknown fields fail); CRD kinds are
    checked for their apiVersion/kind only here (tests check the KServe one against KServe's CRD where present)."""
    import kubernetes_validate

    count = 0
    for name, doc in documents(directory):
        if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:
            raise DeployError(f"{name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')} is not valid "
                              f"Kubernetes {version}: {str(e).splitlines()[0]}") from None
        count += 1
    return count
