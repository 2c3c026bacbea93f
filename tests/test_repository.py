"""Rendered configs parse as Triton's ModelConfig; the validator catches mis-wired ensembles."""
from __future__ import annotations

import shutil

import pytest

from yolotriton.build.repository import RepositoryError, validate_repository


def test_rendered_repository_validates(built_repo):
    configs = validate_repository(built_repo)
    assert set(configs) == {"yolov4", "yolov4_raw", "yolov4_preprocess", "yolov4_detector", "yolov4_postprocess"}
    ens = configs["yolov4"]
    assert ens.platform == "ensemble" and ens.max_batch_size == 8
    assert [o.name for o in ens.output] == ["num_detections", "boxes", "scores", "classes"]
    assert list(ens.output[1].dims) == [100, 4]
    assert configs["yolov4_raw"].input[0].data_type == 2  # TYPE_UINT8
    assert configs["yolov4_detector"].dynamic_batching is not None
    assert configs["yolov4_detector"].model_warmup[0].inputs["images"].zero_data


@pytest.mark.parametrize("edit, message", [
    (("yolov4_detector", 'name: "head_1"', 'name: "head_9"'), "has no output 'head_1'"),
    (("yolov4_postprocess", "dims: [ 6 ]", "dims: [ 7 ]"), "image_meta"),
    (("yolov4", "max_batch_size: 8", "max_batch_size: 16"), "exceeds"),
    (("yolov4_preprocess", "max_batch_size: 8", "max_batch_sizes: 8"), "not a valid Triton ModelConfig"),
])
def test_validator_catches_miswiring(built_repo, tmp_path, edit, message):
    repo = tmp_path / "repo"
    shutil.copytree(built_repo, repo)
    model, old, new = edit
    cfg = repo / model / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    with pytest.raises(RepositoryError, match=message):
        validate_repository(repo)
