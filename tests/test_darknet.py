"""Darknet import: the cfg parser, weights loading, and agreement with OpenCV's darknet runtime."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from reference import opencv_net, opencv_raw_heads
from yolotriton.build.darknet import CfgError, WeightsError, build_graph, import_darknet, parse_cfg, read_weights


def test_yolov4_tiny_structure_and_weights(tiny_detector, default_model):
    m = tiny_detector.model
    _, values = read_weights(default_model.weights)
    assert m.count_params() == values.size == 6_062_814
    heads = tiny_detector.spec.heads
    assert [h.grid for h in heads] == [(13, 13), (26, 26)] and [h.stride for h in heads] == [32, 16]
    assert heads[0].anchors == ((81, 82), (135, 169), (344, 319)) and heads[1].scale_x_y == 1.05


def test_official_yolov4_cfg_builds_with_exact_parameter_count(shared):
    sections = parse_cfg(shared / "yolov4.cfg")
    assert len(sections) - 1 == 162
    assert sum(s.kind == "convolutional" for s in sections) == 110
    g = build_graph(sections)
    trainable = sum(int(np.prod(w.shape)) for w in g.model.trainable_weights)
    assert g.model.count_params() == g.weight_count == 64_429_405
    assert trainable == 64_363_101
    assert [h.stride for h in g.spec.heads] == [8, 16, 32]
    assert [h.scale_x_y for h in g.spec.heads] == [1.2, 1.1, 1.05]


@pytest.mark.parametrize("photo", ["dog", "person", "horses", "eagle", "giraffe", "scream"])
def test_tiny_raw_heads_match_opencv(tiny_detector, default_model, shared, photo):
    """Real weights, real photos: every raw head value agrees with OpenCV's darknet runtime."""
    net = opencv_net(default_model.cfg, default_model.weights)
    blob = cv2.dnn.blobFromImage(cv2.imread(str(shared / f"{photo}.jpg")), 1 / 255.0, (416, 416), swapRB=True, crop=False)
    ours = tiny_detector.predict(blob.transpose(0, 2, 3, 1).copy())
    for name, ref in zip(tiny_detector.spec.output_names, opencv_raw_heads(net, blob)):
        # float32 through 38 layers in two runtimes: measured ~1.5e-4 on values up to ~25 (6e-6 relative)
        assert np.abs(ours[name] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), name


def write_random_weights(graph, path, seed=0, silent_heads=False):
    """Random weights in darknet's layout, scaled so activations stay finite through all 110 layers.

    silent_heads: the convolutions that feed [yolo] layers (the ones without batch norm) get zero
    kernels and bias -10, so nothing is detected: the same arithmetic, but no NMS work (benchmarks)."""
    rng = np.random.default_rng(seed)
    parts = [np.array([0, 2, 5], "<i4").tobytes(), np.array([0], "<u8").tobytes()]
    for c in graph.convs:
        f, n = c.filters, c.in_channels * c.size * c.size
        silent = silent_heads and c.bn is None
        if c.bn is not None:
            parts += [rng.normal(0, 0.1, f), rng.uniform(1.0, 2.0, f), rng.normal(0, 0.1, f), rng.uniform(0.5, 1.5, f)]
        else:
            parts.append(np.full(f, -10.0) if silent else rng.normal(0, 0.1, f))
        parts.append(np.zeros(f * n) if silent else rng.normal(0, np.sqrt(2.0 / n), f * n))
    path.write_bytes(b"".join(p if isinstance(p, bytes) else p.astype("<f4").tobytes() for p in parts))


def test_official_yolov4_random_weights_match_opencv(shared, tmp_path):
    """The full YOLOv4 graph (mish, SPP pools, routes, shortcuts, scale_x_y heads) against OpenCV."""
    graph = build_graph(parse_cfg(shared / "yolov4.cfg"))
    weights = tmp_path / "random.weights"
    write_random_weights(graph, weights)
    det = import_darknet(shared / "yolov4.cfg", weights)
    size = (det.spec.input_width, det.spec.input_height)  # the official cfg says 608x608
    blob = cv2.dnn.blobFromImage(cv2.imread(str(shared / "dog.jpg")), 1 / 255.0, size, swapRB=True, crop=False)
    ours = det.predict(blob.transpose(0, 2, 3, 1).copy())
    refs = opencv_raw_heads(opencv_net(shared / "yolov4.cfg", weights), blob)
    for name, ref in zip(det.spec.output_names, refs):
        assert ours[name].shape == ref.shape
        # the image must still shape the output (not a constant map), or the comparison would prove little
        assert ref.std(axis=(1, 2)).mean() > 0.01, f"{name}: random weights gave a dead network"
        assert np.abs(ours[name] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), name


def test_weights_size_mismatch_says_by_how_much(default_model, tmp_path):
    bad = tmp_path / "short.weights"
    bad.write_bytes(default_model.weights.read_bytes()[:-40])
    with pytest.raises(WeightsError, match="6,062,804 values but the cfg needs 6,062,814 .10 too few"):
        import_darknet(default_model.cfg, bad)


def test_seen_header_32_bit(default_model, tmp_path):
    data = default_model.weights.read_bytes()
    old = tmp_path / "old.weights"
    old.write_bytes(np.array([0, 1, 0], "<i4").tobytes() + np.array([7], "<u4").tobytes() + data[20:])
    (major, minor, _, seen), values = read_weights(old)
    assert (major, minor, seen) == (0, 1, 7) and values.size == 6_062_814


@pytest.mark.parametrize("text, message", [
    ("[net]\nwidth=416\nheight=416\n[local]\nsize=3\n", r"unsupported cfg section \[local\]"),
    ("[convolutional]\nfilters=3\n", r"starts with a \[net\]"),
    ("[net]\nwidth=416\nheight=416\n[convolutional]\nfilters=8\nsize=3\nactivation=gelu\n", "unsupported activation 'gelu'"),
    ("[net]\nwidth=416\nheight=416\n[convolutional]\nfilters=8\nsize=3\n", r"no \[yolo\] layer"),
    ("[net]\nwidth=416\nheight=416\n[route]\nlayers=-3\n", "points outside"),
    ("[net]\nwidth=400\nheight=416\n", "multiples of 32"),
])
def test_bad_cfg_is_named(tmp_path, text, message):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(CfgError, match=message):
        build_graph(parse_cfg(cfg))
