"""Shared fixtures: real weights, a real built repository, a real tritonserver on free loopback ports."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = ROOT.parent / "shared" / "darknet"
PHOTOS = ("dog", "person", "horses", "eagle", "giraffe", "scream")


@pytest.fixture(scope="session")
def shared() -> Path:
    assert (SHARED / "yolov4.cfg").is_file(), f"{SHARED} is missing: tests read darknet's files from ../shared"
    return SHARED


@pytest.fixture(scope="session")
def default_model():
    from yolotriton.build.assets import default_model

    return default_model()


@pytest.fixture(scope="session")
def photos(shared, default_model) -> list[Path]:
    return [shared / f"{n}.jpg" for n in PHOTOS] + list(default_model.samples)


@pytest.fixture(scope="session")
def tiny_detector(default_model):
    from yolotriton.build.darknet import import_darknet

    return import_darknet(default_model.cfg, default_model.weights, default_model.names)


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory, default_model) -> Path:
    """The default build (README command 1's job) into a temporary folder, through build_repo.py's main().

    YOLOTRITON_TEST_REPO=PATH uses a repository built elsewhere instead: the GPU host has no TensorFlow,
    so its end-to-end run serves a repository built here with --detector-device gpu.
    """
    if os.environ.get("YOLOTRITON_TEST_REPO"):
        return Path(os.environ["YOLOTRITON_TEST_REPO"])
    import build_repo

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    assert build_repo.main(["--output", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def server(built_repo, tmp_path_factory):
    from yolotriton.serve.server import TritonServer

    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with TritonServer(built_repo, log_path=log) as s:
        yield s
