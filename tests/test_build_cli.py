"""build_repo.py's command line: bad input gives one clear line, exit 2, and leaves the output folder as it was."""
from __future__ import annotations

import pytest

import build_repo
from yolotriton.build import export


@pytest.fixture
def existing_repo(tmp_path):
    out = tmp_path / "model_repository"
    (out / "previous_model" / "1").mkdir(parents=True)
    (out / "previous_model" / "config.pbtxt").write_text('name: "previous_model"\n')
    return out


def run_failing(argv, capsys, out):
    before = sorted(p.relative_to(out.parent) for p in out.parent.rglob("*"))
    assert build_repo.main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    after = sorted(p.relative_to(out.parent) for p in out.parent.rglob("*"))
    assert after == before, "a failed build changed the output folder or left files beside it"
    return err


def test_missing_cfg(capsys, existing_repo, default_model, tmp_path):
    err = run_failing(["--cfg", str(tmp_path / "nope.cfg"), "--weights", str(default_model.weights)], capsys, existing_repo)
    assert err.startswith("error: cfg file not found:") and "\n" not in err


def test_missing_weights(capsys, existing_repo, default_model, tmp_path):
    err = run_failing(["--cfg", str(default_model.cfg), "--weights", str(tmp_path / "x.weights")], capsys, existing_repo)
    assert err.startswith("error: weights file not found") and "\n" not in err


def test_wrong_sized_weights(capsys, existing_repo, default_model, tmp_path):
    bad = tmp_path / "bad.weights"
    bad.write_bytes(default_model.weights.read_bytes() + b"\0" * 400)
    err = run_failing(["--cfg", str(default_model.cfg), "--weights", str(bad)], capsys, existing_repo)
    assert "100 too many" in err and "\n" not in err


def test_unsupported_section(capsys, existing_repo, default_model, tmp_path):
    cfg = tmp_path / "odd.cfg"
    cfg.write_text(default_model.cfg.read_text().replace("[maxpool]", "[reorg]", 1))
    err = run_failing(["--cfg", str(cfg), "--weights", str(default_model.weights)], capsys, existing_repo)
    assert "unsupported cfg section [reorg]" in err and "\n" not in err


def test_unreadable_keras_file(capsys, existing_repo, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an hdf5 file")
    err = run_failing(["--keras", str(bad)], capsys, existing_repo)
    assert err.startswith("error: cannot load") and "broken.h5" in err and "\n" not in err


def test_failed_parity_gate_keeps_previous_repository(capsys, existing_repo, monkeypatch):
    """A failure after the export started (here: a parity gate tightened to zero) must not touch the output."""
    monkeypatch.setattr(export, "PARITY_RTOL", 0.0)
    err = run_failing([], capsys, existing_repo)
    assert "parity tolerance" in err
    assert (existing_repo / "previous_model" / "config.pbtxt").is_file()


def test_a_killed_converter_says_why_and_keeps_previous_repository(capsys, existing_repo):
    """The converter child ended by SIGKILL (what the OOM killer sends): one line with the signal, the peak memory
    and the machine's, a hint, exit 2, and the output folder as it was. The kill is ours, sent as soon as the
    tf2onnx child of this process appears."""
    import os
    import signal
    import threading
    import time

    def kill_converter(stop):
        while not stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    parent = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
                except OSError:
                    continue
                if b"tf2onnx.convert" in cmd and int(parent) == os.getpid():
                    time.sleep(2)  # let it take some memory first
                    os.kill(int(pid), signal.SIGKILL)
                    return
            time.sleep(0.1)

    stop = threading.Event()
    killer = threading.Thread(target=kill_converter, args=(stop,), daemon=True)
    killer.start()
    try:
        err = run_failing([], capsys, existing_repo)
    finally:
        stop.set()
        killer.join(5)
    assert err.startswith("error: ") and "\n" not in err, err
    assert "tf2onnx was killed by SIGKILL after reaching" in err and "GB resident, on a machine of" in err, err
    assert "OOM killer" in err and "this model's weights are 0.02 GB" in err, err
    assert (existing_repo / "previous_model" / "config.pbtxt").read_text() == 'name: "previous_model"\n'


def test_large_model_conversion_falls_back_to_the_ordinary_path(existing_repo, capsys, monkeypatch):
    """tf2onnx's --large_model path (the low-memory one) failing is said, and the ordinary path converts: the build
    succeeds and its model.onnx is one self-contained file. The failure is ours (argument plumbing: no model we
    have fails that path); both conversions are the real tf2onnx."""
    import onnx

    real, calls = export._run_tf2onnx, []

    def large_model_fails(saved, out, opset, log, large_model):
        calls.append(large_model)
        if large_model:
            raise export.ExportError("tf2onnx failed:\nan optimizer raised (the test's)")
        return real(saved, out, opset, log, large_model)

    monkeypatch.setattr(export, "_run_tf2onnx", large_model_fails)
    assert build_repo.main(["--output", str(existing_repo), "--name", "tiny"]) == 0
    assert calls == [True, False]
    out = capsys.readouterr().out
    assert "tf2onnx --large_model failed (an optimizer raised (the test's)); converting again without it" in out
    model = onnx.load(str(existing_repo / "tiny_detector" / "1" / "model.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_large_model_output_is_one_file(existing_repo, capsys):
    """The default conversion (--large_model, a zip of the model and its tensors) lands as one model.onnx, every
    weight inside it, nothing left beside it."""
    import onnx

    assert build_repo.main(["--output", str(existing_repo), "--name", "tiny"]) == 0
    assert "tf2onnx: peak memory" in capsys.readouterr().out
    folder = existing_repo / "tiny_detector" / "1"
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert model.graph.initializer
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not list(folder.glob("*.zip")) and not list(existing_repo.parent.glob("*.zip"))


def test_large_model_tensor_names_past_the_file_name_limit(tmp_path, photos):
    """A tensor name longer than a file name may be (255 bytes; the TF2 packages' deep Keras models have them) still
    converts by the large-model path: its zip's entries are read, not extracted (the fresh-clone CI run of
    2026-12-05 failed to build licht_t's model with OSError 36, File name too long)."""
    import keras
    import onnx

    inp = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", name="a_layer_name_" + "x" * 240)(inp)  # > 1,024 weights: external
    out = keras.layers.Conv2D(21, 1, name="head_" + "y" * 250)(keras.layers.MaxPooling2D(32)(x))
    model_path = tmp_path / "long_names.keras"
    keras.Model(inp, out).save(model_path)
    repo = tmp_path / "repo"
    assert build_repo.main(["--keras", str(model_path), "--anchors", "10,14,23,27,37,58", "--accept-layout",
                            "--parity-images", *map(str, photos[:2]), "--output", str(repo)]) == 0
    model = onnx.load(str(repo / "yolov4_detector" / "1" / "model.onnx"))
    names = [t.name for t in model.graph.initializer]
    assert max(map(len, names)) > 255, names  # the case this test is for
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_successful_build_replaces_repository(existing_repo, capsys):
    assert build_repo.main(["--output", str(existing_repo), "--name", "tiny", "--resize", "letterbox"]) == 0
    names = sorted(p.name for p in existing_repo.iterdir())
    assert names == ["README.md", "settings.json", "tiny", "tiny_detector", "tiny_postprocess", "tiny_preprocess",
                     "tiny_raw"]
    assert 'string_value: "letterbox"' in (existing_repo / "tiny_preprocess" / "config.pbtxt").read_text()
    assert not [p for p in existing_repo.parent.iterdir() if p.name.startswith(".")]


def test_gpu_build_defaults_and_fp16_fallback(tmp_path, capsys, photos):
    """--detector-device gpu alone: max batch 32 and FP16 past its accuracy gate; a model whose detections FP16
    changes (an intermediate of ~1e5, past FP16's range) is served in FP32, with one log line, instead of
    failing the build. Rendering only: a GPU repository builds on any machine."""
    import keras

    from yolotriton.build.repository import read_settings

    inp = keras.Input((64, 64, 3))
    x = keras.layers.AveragePooling2D(32)(inp)  # [N, 2, 2, 3]
    # ~1e5 in between: finite in FP32, beyond FP16's 65,504; the next convolution brings it back to logits
    big = keras.layers.Conv2D(4, 1, kernel_initializer=keras.initializers.Constant(4e4), use_bias=False)(x)
    out = keras.layers.Conv2D(21, 1, kernel_initializer=keras.initializers.RandomNormal(0, 2e-5, seed=1),
                              bias_initializer=keras.initializers.Constant(1.0))(big)
    model_path = tmp_path / "fragile.keras"
    keras.Model(inp, out).save(model_path)
    assert build_repo.main(["--detector-device", "gpu", "--output", str(tmp_path / "default"), "--deploy-dir",
                            str(tmp_path / "deploy"), "--deploy-model-repository", "s3://10.0.0.7:9000/models/y"]) == 0
    assert (read_settings(tmp_path / "default").detector_precision, read_settings(tmp_path / "default").max_batch_size) \
        == ("fp16", 32)
    # the manifests describe the repository as built: its engine (torch, resolved from auto) is in the image
    assert read_settings(tmp_path / "default").engine == "torch"
    assert '"torch==2.11.0"' in (tmp_path / "deploy" / "Dockerfile").read_text()
    capsys.readouterr()
    common = ["--keras", str(model_path), "--anchors", "10,14,23,27,37,58", "--accept-layout",
              "--detector-device", "gpu", "--host-cores", "16", "--host-gpus", "1",
              "--parity-images", *map(str, photos[:2])]
    repo = tmp_path / "repo"
    assert build_repo.main([*common, "--output", str(repo)]) == 0
    log = capsys.readouterr().out
    assert "[fp16] not served:" in log and "serving FP32" in log, log
    settings = read_settings(repo)
    assert (settings.detector_precision, settings.max_batch_size) == ("fp32", 32)
    assert not (repo / "yolov4_detector" / "1" / "model.fp16.onnx").exists()
    assert 'string_value: "model.onnx"' in (repo / "yolov4_detector" / "config.pbtxt").read_text()
    # asked for explicitly, FP16 that fails its gate fails the build (exit 2, one line)
    assert build_repo.main([*common, "--detector-precision", "fp16", "--output", str(tmp_path / "never")]) == 2
    assert "FP16 changes the detections" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_darknet_cfg_nms_kind_is_served(tmp_path, capsys, default_model):
    """A cfg whose [yolo] layers say nms_kind=diounms (the scaled-YOLOv4 cfgs do) is served with darknet's
    DIoU-NMS and the cfg's beta_nms, with a build-log line; --nms-kind overrides; an unknown kind is refused."""
    import json

    text = default_model.cfg.read_text()
    assert text.count("nms_kind=greedynms") == 2
    cfg = tmp_path / "diou.cfg"
    cfg.write_text(text.replace("nms_kind=greedynms", "nms_kind=diounms").replace("beta_nms=0.6", "beta_nms=0.8"))
    base = ["--cfg", str(cfg), "--weights", str(default_model.weights), "--names", str(default_model.names)]

    def built(*extra):
        out = tmp_path / f"repo{len(list(tmp_path.iterdir()))}"
        assert build_repo.main([*base, *extra, "--output", str(out)]) == 0
        params = (out / "yolov4_postprocess" / "config.pbtxt").read_text()
        return capsys.readouterr().out, params, json.loads((out / "settings.json").read_text())

    log, params, settings = built()
    assert "the cfg declares nms_kind=diounms beta_nms=0.8" in log, log
    assert (settings["nms_kind"], settings["beta_nms"]) == ("diou", 0.8)
    assert 'key: "nms_kind" value: { string_value: "diou" }' in params
    _, _, settings = built("--nms-kind", "greedy")
    assert settings["nms_kind"] == "greedy"
    _, _, settings = built("--beta-nms", "0.5")
    assert (settings["nms_kind"], settings["beta_nms"]) == ("diou", 0.5)
    cfg.write_text(text.replace("nms_kind=greedynms", "nms_kind=cornernms"))
    assert build_repo.main([*base, "--output", str(tmp_path / "never")]) == 2
    assert "nms_kind=cornernms is not supported" in capsys.readouterr().err
