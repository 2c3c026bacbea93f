"""build_repo.py's command line: bad input gives one clear line, exit 2, and leaves the output folder as it was."""
from __future__ import annotations

import pytest

import build_repo
from yolotriton import export


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


def test_successful_build_replaces_repository(existing_repo, capsys):
    assert build_repo.main(["--output", str(existing_repo), "--name", "tiny", "--resize", "letterbox"]) == 0
    names = sorted(p.name for p in existing_repo.iterdir())
    assert names == ["README.md", "settings.json", "tiny", "tiny_detector", "tiny_postprocess", "tiny_preprocess",
                     "tiny_raw"]
    assert 'string_value: "letterbox"' in (existing_repo / "tiny_preprocess" / "config.pbtxt").read_text()
    assert not [p for p in existing_repo.parent.iterdir() if p.name.startswith(".")]
