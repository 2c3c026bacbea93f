"""The benchmark tooling: perf_analyzer on the venv PATH with real JPEG input data, and re-rendering."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from yolotriton.build.pipeline import rerender  # noqa: E402
from yolotriton.build.repository import RepositoryError, read_settings, validate_repository  # noqa: E402


def test_perf_analyzer_drives_the_ensemble_with_real_jpegs(server, photos, tmp_path):
    from run import perf_analyzer, perf_input_file

    assert (ROOT / ".venv" / "bin" / "perf_analyzer").is_file()
    images = tmp_path / "images.json"
    perf_input_file([p.read_bytes() for p in photos[:3]], images)
    rows = perf_analyzer(server, "yolov4", tmp_path / "pa.csv",
                         ["--input-data", str(images), "--concurrency-range", "2:2", "--measurement-interval", "2000"],
                         lambda *_: None)
    assert len(rows) == 1 and float(rows[0]["Inferences/Second"]) > 0
    # perf_analyzer counts errors as failures and exits non-zero; a wrong BYTES encoding would fail here


def test_cpu_breakdown_accounts_for_every_process(server, photos, tmp_path):
    """The benchmark's CPU-per-image table reads /proc: each model's stubs, tritonserver and perf_analyzer
    must all be found, and the detector must dominate (it is ~90% of the work)."""
    from run import cpu_breakdown, perf_input_file

    images = tmp_path / "images.json"
    perf_input_file([p.read_bytes() for p in photos[:3]], images)
    ips, per_image = cpu_breakdown(server, 2, images, lambda *_: None, window_ms=2000)
    assert ips > 0
    names = {k.split(" ")[0] for k in per_image}
    assert {"yolov4_preprocess", "yolov4_detector", "yolov4_postprocess", "tritonserver", "perf_analyzer"} <= names
    assert all(v > 0 for v in per_image.values()), per_image
    detector = next(v for k, v in per_image.items() if k.startswith("yolov4_detector"))
    assert detector > 0.6 * sum(per_image.values()), per_image


def test_rerender_changes_configs_keeps_weights(built_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(built_repo, repo)
    weights = repo / "yolov4_detector" / "1" / "model.onnx"
    before = weights.read_bytes()
    s = rerender(repo, detector_instances=1, ort_threads=2, max_queue_delay_us=2000, max_batch_size=4)
    cfg = validate_repository(repo)
    assert cfg["yolov4_detector"].instance_group[0].count == 1
    assert cfg["yolov4_detector"].parameters["intra_op_threads"].string_value == "2"
    assert cfg["yolov4_detector"].dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg["yolov4"].max_batch_size == 4 and read_settings(repo) == s
    assert weights.read_bytes() == before
    assert (built_repo / "yolov4_detector" / "config.pbtxt").read_text().count("count: 2") == 1  # original untouched


def test_rerender_with_a_bad_setting_changes_nothing(built_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(built_repo, repo)
    snapshot = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(RepositoryError, match="max_batch_size must be at least 1"):
        rerender(repo, max_batch_size=0)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cpu_breakdown_counts_images_of_batched_requests(server, photos, tmp_path):
    """perf_analyzer -b 2 with the JPEG JSON: two images per request, counted as images (Triton counts requests)."""
    from run import cpu_breakdown, perf_input_file

    images = tmp_path / "images.json"
    perf_input_file([p.read_bytes() for p in photos[:3]], images)
    stats = lambda: grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
        "yolov4_detector", as_json=True)["model_stats"][0]["inference_count"]
    before = int(stats())
    ips, per_image = cpu_breakdown(server, 1, images, lambda *_: None, window_ms=1500, images_per_request=2)
    assert ips > 0 and all(v > 0 for v in per_image.values()), per_image
    assert int(stats()) - before >= 2 * 3  # the detector saw images, two per request


def test_tune_searches_gpu_settings_for_a_gpu_repository():
    from tune import DIMENSIONS, dimensions

    from yolotriton.build.repository import RepositorySettings

    assert dimensions(RepositorySettings()) is DIMENSIONS
    gpu = dimensions(RepositorySettings(detector_device="gpu", preprocess_device="gpu"))
    keys = {k for dim in gpu for alt in dim for k in alt}
    assert keys == {"detector_instances", "ort_threads", "preprocess_instances", "postprocess_instances",
                    "max_queue_delay_us", "cuda_wait"}
    assert max(alt["detector_instances"] for alt in gpu[0]) <= 4  # each one a CUDA context, not one per core
    fused = dimensions(RepositorySettings(detector_device="gpu", preprocess_device="gpu", decode="detector",
                                          nms="detector"))
    assert "postprocess_instances" not in {k for dim in fused for alt in dim for k in alt}
    whole = dimensions(RepositorySettings(detector_device="gpu", preprocess_device="gpu", decode="detector",
                                          nms="detector", preprocess_in="detector"))
    keys = {k for dim in whole for alt in dim for k in alt}
    assert not keys & {"preprocess_instances", "postprocess_instances"} and "detector_instances" in keys
    cpu_whole = dimensions(RepositorySettings(decode="detector", nms="detector", preprocess_in="detector"))
    assert "preprocess_instances" not in {k for dim in cpu_whole for alt in dim for k in alt}


@pytest.mark.slow
def test_tune_stops_at_its_budget_and_writes_the_best(built_repo, tmp_path):
    from tune import tune

    repo = tmp_path / "repo"
    shutil.copytree(built_repo, repo)
    best, rows = tune(repo, concurrency=2, interval=1500, log=lambda *_: None, budget_s=1)
    assert len(rows) == 1 and rows[0] is best and best["ips"] > 0  # one candidate measured, then the budget
