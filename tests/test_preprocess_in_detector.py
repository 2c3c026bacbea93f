"""--preprocess-in detector: the Python detector takes the images itself and, with NMS there too, is the whole
pipeline (one model per request; the ensembles yolov4 and yolov4_raw have one step).

Here on the CPU; the GPU host runs the same stub with the GPU preprocess against its GPU repository, where it
is the default. The answers must be the other layouts': OpenCV's darknet detections, the same raw-array
entry, per-request overrides, and a bad image failing only its own request.
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import build_repo
from client import YoloClient
from reference import assert_local_pipelines_agree, assert_same, assert_served_like, infer_bytes, opencv_net
from yolotriton.build.pipeline import copy_repository, rerender
from yolotriton.runtime.detections import FINAL_OUTPUTS
from yolotriton.build.repository import (RepositoryError, RepositorySettings, auto_instances, model_configs,
                                   resolve_preprocess_in, spec_path, validate_repository)
from yolotriton.serve.server import TritonServer
from yolotriton.build.spec import DetectorSpec, YoloHead

RAW = DetectorSpec(416, 416, 80, heads=(YoloHead("head_0", ((10, 14),) * 3, 32, (13, 13)),))
GPU_NMS = dict(detector_device="gpu", preprocess_device="gpu", decode="detector", nms="detector")


def test_preprocess_in_detector_settings():
    assert resolve_preprocess_in("auto", RepositorySettings(**GPU_NMS)) == "detector"
    # not with the postprocess model, nor on the CPU (not measured there), nor when asked
    assert resolve_preprocess_in("auto", RepositorySettings(**{**GPU_NMS, "nms": "postprocess"})) == "preprocess"
    assert resolve_preprocess_in("auto", RepositorySettings(decode="detector", nms="detector")) == "preprocess"
    assert resolve_preprocess_in("preprocess", RepositorySettings(**GPU_NMS)) == "preprocess"
    members, ensembles = model_configs(RAW, RepositorySettings(decode="detector", nms="detector",
                                                               preprocess_in="detector", detector_instances=5))
    (det,) = members
    assert [t.name for t in det.inputs] == ["IMAGE", "RAW_IMAGE"] and all(t.optional for t in det.inputs)
    assert [t.name for t in det.outputs] == list(FINAL_OUTPUTS) and det.instances == 5
    assert (det.parameters["preprocess"], det.parameters["nms"], det.parameters["input_width"]) == ("on", "on", "416")
    assert det.parameters["max_bytes"] == str(64 << 20) and not det.warmup  # no zero-filled "image" to decode
    for e, entry in zip(ensembles, ("IMAGE", "RAW_IMAGE")):
        assert e["steps"] == [{"model": "yolov4_detector", "input_map": {entry: entry},
                               "output_map": {n: n for n in FINAL_OUTPUTS}}]
    with pytest.raises(RepositoryError, match="needs --nms detector"):
        RepositorySettings(decode="detector", preprocess_in="detector")
    with pytest.raises(RepositoryError, match="--preprocess-in detector is an option of --target python"):
        RepositorySettings(target="tensorrt", decode="detector", nms="detector", preprocess_in="detector")
    with pytest.raises(RepositoryError, match="preprocess in 'gpu'"):
        RepositorySettings(preprocess_in="gpu")
    # measured on the 16-core H200 (docs/results/gpu-h200-instances.md): 12 per GPU served 4,933 img/s, 8 4,434,
    # 16 4,634; three per four cores of each GPU, 4 to 12
    whole = lambda cores, gpus: auto_instances(cores, gpus, "gpu", True, True, preprocess_in_detector=True)
    assert whole(16, 1)[:3] == (1, 12, 1)
    assert whole(16, 2)[1] == 6 and "on each of the 2 GPUs" in whole(16, 2)[3]  # per GPU: 6 on each
    assert whole(64, 1)[1] == 12 and whole(4, 1)[1] == 4
    # a network of three heads (full YOLOv4, GPU-bound): 608 served the same with 4 and 6, so at most 6
    heavy = auto_instances(16, 1, "gpu", True, True, preprocess_in_detector=True, heavy=True)
    assert heavy[1] == 6 and "three heads" in heavy[3]


def test_cli_places_the_preprocess_and_sizes_the_detector(tmp_path, capsys):
    out = tmp_path / "repo"
    assert build_repo.main(["--preprocess-in", "detector", "--nms", "postprocess", "--output", str(out)]) != 0
    assert "needs --nms detector" in capsys.readouterr().err and not out.exists()
    host = build_repo.parse_args(["--detector-device", "gpu", "--host-cores", "16", "--host-gpus", "1"])
    counts = lambda s: tuple(build_repo.instance_counts(host, s).values())[:3]
    assert counts(RepositorySettings(**GPU_NMS, preprocess_in="detector")) == (1, 12, 1)
    full = DetectorSpec(608, 608, 80, heads=tuple(YoloHead(f"head_{i}", ((10, 14),) * 3, s, (608 // s, 608 // s))
                                                  for i, s in enumerate((8, 16, 32))))
    assert tuple(build_repo.instance_counts(host, RepositorySettings(**GPU_NMS, preprocess_in="detector"),
                                            full).values())[:3] == (1, 6, 1)
    assert counts(RepositorySettings(**GPU_NMS)) == (3, 4, 1)


@pytest.fixture(scope="module")
def whole_repo(built_repo, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("whole") / "model_repository"
    copy_repository(built_repo, repo)
    rerender(repo, decode="detector", nms="detector", preprocess_in="detector")
    return repo


def test_rerender_moves_the_preprocess_into_the_detector_and_back(whole_repo, tmp_path):
    assert not (whole_repo / "yolov4_preprocess").exists() and not (whole_repo / "yolov4_postprocess").exists()
    det = whole_repo / "yolov4_detector" / "1"
    assert {"runtime/preprocess.py", "runtime/images.py", "runtime/detections.py", "spec.json"} <= {
        str(p.relative_to(det)) for p in det.rglob("*")}
    assert spec_path(whole_repo) == det / "spec.json"
    assert sorted(validate_repository(whole_repo)) == ["yolov4", "yolov4_detector", "yolov4_raw"]
    back = tmp_path / "back"
    copy_repository(whole_repo, back)
    rerender(back, preprocess_in="preprocess")
    assert (back / "yolov4_preprocess" / "1" / "runtime" / "preprocess.py").is_file()
    assert not (back / "yolov4_detector" / "1" / "resize.onnx").exists()  # the runtime package stays, whole
    assert len(validate_repository(back)) == 4


def test_local_pipeline_reads_the_one_model_repository(whole_repo, built_repo, photos):
    assert_local_pipelines_agree(whole_repo, built_repo, photos)


def _infer_raw(client, rgb):
    inp = grpcclient.InferInput("RAW_IMAGE", [1, *rgb.shape], "UINT8")
    inp.set_data_from_numpy(rgb[None])
    res = client.infer("yolov4_raw", [inp])
    return {k: res.as_numpy(k) for k in FINAL_OUTPUTS}


def test_served_as_one_model_matches_opencv_and_the_ensemble(whole_repo, server, photos, default_model):
    net = opencv_net(default_model.cfg, default_model.weights)
    other = grpcclient.InferenceServerClient(server.grpc_url)
    blobs = [p.read_bytes() for p in photos]
    with TritonServer(whole_repo) as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)
        assert not client.is_model_ready("yolov4_preprocess")
        batch = assert_served_like(client, other, grpcclient, net, photos)
        rgb = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
        # two servers: on a GPU each instance has its own cuDNN algorithms (reference.assert_same's bound)
        assert_same(_infer_raw(client, rgb), _infer_raw(other, rgb), "raw RGB")
        params = {"score_threshold": 0.05, "max_detections": 3}
        a, b = infer_bytes(client, grpcclient, blobs[:2], params=params), infer_bytes(other, grpcclient, blobs[:2],
                                                                                       params=params)
        np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
        # the project's client reads the input size and limits from the one model's config, and calls that model
        # directly: the one-step ensembles' scheduling is skipped (docs/gpu-host.md: 11-12 % at concurrency 256)
        count = lambda m: int(client.get_inference_statistics(m, as_json=True)["model_stats"][0]["inference_count"])
        before = {m: count(m) for m in ("yolov4", "yolov4_raw", "yolov4_detector")}
        with YoloClient(s.grpc_url) as yc:
            assert (yc.info.input_width, yc.info.max_pixels) == (416, 50_000_000)
            assert (yc.info.entry, yc.info.raw_entry) == ("yolov4_detector", "yolov4_detector")
            assert len(yc.detect(photos[0])) == int(batch["num_detections"][0, 0])
            assert len(yc.detect(rgb)) == int(_infer_raw(client, rgb)["num_detections"][0, 0])
        after = {m: count(m) for m in before}
        assert (after["yolov4"] - before["yolov4"], after["yolov4_raw"] - before["yolov4_raw"]) == (0, 1)  # _infer_raw
        assert after["yolov4_detector"] - before["yolov4_detector"] == 3


def test_a_bad_image_fails_only_its_own_request(whole_repo, photos):
    good = photos[0].read_bytes()
    bad = good[: len(good) // 3]  # a truncated JPEG: its header is fine, its pixels are not there
    with TritonServer(whole_repo) as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)
        want = infer_bytes(client, grpcclient, [good])

        def call(data):
            try:
                return infer_bytes(client, grpcclient, [data])
            except InferenceServerException as e:
                return e

        # sent together so that the dynamic batcher can put them into one execute
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(call, [good, bad, good, b"not an image", good, good]))
        for i in (1, 3):
            assert isinstance(got[i], InferenceServerException) and got[i].status() == "StatusCode.INVALID_ARGUMENT"
        assert "not a JPEG, PNG or BMP" in got[3].message()
        for i in (0, 2, 4, 5):
            np.testing.assert_array_equal(got[i]["num_detections"], want["num_detections"])
        np.testing.assert_array_equal(infer_bytes(client, grpcclient, [good])["classes"], want["classes"])


def test_request_preprocessor_names_the_bad_image_of_a_request(photos):
    """preprocess.RequestPreprocessor in-process (CPU path), requests as dicts of their inputs."""
    from yolotriton.runtime.preprocess import ImageError, RequestPreprocessor

    params = {"input_width": "416", "input_height": "416", "resize_mode": "stretch", "max_pixels": "50000000",
              "max_bytes": str(64 << 20), "device": "cpu"}
    pre = RequestPreprocessor(params, "", log=lambda *_: None)
    good = photos[0].read_bytes()
    encoded = lambda *blobs: {"IMAGE": np.array([[b] for b in blobs], dtype=object)}
    raw = {"RAW_IMAGE": np.zeros((1, 8, 8, 3), np.uint8)}
    requests = [encoded(good, b"junk"), encoded(b"junk"), encoded(good, good), raw, {}]
    got = pre(requests, lambda request, name: request.get(name))
    assert str(got[0]).startswith("image 1 of the request: not a JPEG, PNG or BMP")
    assert str(got[1]).startswith("not a JPEG, PNG or BMP")
    assert got[2][0].shape == (2, 416, 416, 3) and got[3][0].shape == (1, 416, 416, 3)
    assert isinstance(got[4], ImageError) and "neither IMAGE nor RAW_IMAGE" in str(got[4])
