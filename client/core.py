"""What the sync and async clients share: the model description read from the server, request building,
and turning the ensemble's outputs into typed detections. No I/O here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

OUTPUTS = ("num_detections", "boxes", "scores", "classes")
THRESHOLDS = ("score_threshold", "iou_threshold", "max_detections")

# A path, encoded bytes (JPEG/PNG/BMP), or a decoded RGB uint8 array [h, w, 3].
ImageLike = Union[str, Path, bytes, bytearray, np.ndarray]


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's own pixels

    def to_dict(self) -> dict:
        return {"label": self.label, "class_id": self.class_id, "score": round(self.score, 5),
                "box": [round(v, 2) for v in self.box]}


@dataclass(frozen=True)
class ModelInfo:
    """Read from the server's model configs, never assumed."""

    name: str
    raw_entry: str | None  # the model taking RAW_IMAGE arrays, if the server has one (see entry_model)
    labels: tuple[str, ...]
    input_width: int
    input_height: int
    max_batch_size: int
    max_detections: int
    max_pixels: int
    max_bytes: int
    entry: str = ""  # the model taking IMAGE bytes: `name`, or the one model behind it (entry_model)

    @classmethod
    def from_configs(cls, name: str, ensemble: dict, preprocess: dict, raw: dict | None) -> "ModelInfo":
        """`raw`: the config of the `NAME_raw` ensemble where the server has it ready, else None."""
        params = lambda cfg: {k: v["string_value"] for k, v in (cfg.get("parameters") or {}).items()}
        ep, pp = params(ensemble), params(preprocess)
        boxes = next(o for o in ensemble["output"] if o["name"] == "boxes")
        return cls(name=name, entry=entry_model(name, ensemble, "IMAGE"),
                   raw_entry=entry_model(f"{name}_raw", raw, "RAW_IMAGE") if raw is not None else None,
                   labels=tuple(json.loads(ep.get("labels", "[]"))),
                   input_width=int(pp["input_width"]), input_height=int(pp["input_height"]),
                   max_batch_size=int(ensemble.get("max_batch_size", 0) or 1), max_detections=int(boxes["dims"][0]),
                   max_pixels=int(pp["max_pixels"]), max_bytes=int(pp["max_bytes"]))

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)


def entry_model(name: str, ensemble: dict, input_name: str) -> str:
    """The model to send `input_name` to: the one model behind ensemble `name` where the ensemble is a single step
    that passes that input and the four outputs through under their own names (the one-model GPU layout), else
    `name`. The direct call skips the ensemble's scheduling step, the same work: served yolov4-tiny did 11-12 %
    more images/s at concurrency 256 called directly (H100 and H200, docs/gpu-host.md)."""
    steps = (ensemble.get("ensemble_scheduling") or {}).get("step") or []
    if ensemble.get("platform") != "ensemble" or len(steps) != 1:
        return name
    step = steps[0]
    outputs = step.get("output_map") or {}
    if (step.get("input_map") or {}) != {input_name: input_name} or any(outputs.get(o) != o for o in OUTPUTS):
        return name
    return step["model_name"]


def preprocess_model_name(ensemble: dict) -> str:
    steps = ensemble["ensemble_scheduling"]["step"]
    return next(s["model_name"] for s in steps if "IMAGE" in s.get("input_map", {}) or "RAW_IMAGE" in s.get("input_map", {}))


def load_image(image: ImageLike) -> bytes | np.ndarray:
    """Encoded bytes stay bytes (sent as IMAGE); arrays are checked and sent as RAW_IMAGE."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be RGB uint8 [height, width, 3], got {image.dtype} {list(image.shape)}")
        return np.ascontiguousarray(image)
    raise TypeError(f"cannot send {type(image).__name__} as an image: give a path, bytes or an RGB uint8 array")


def request_parameters(**thresholds) -> dict | None:
    given = {k: v for k, v in thresholds.items() if k in THRESHOLDS and v is not None}
    return given or None


def to_detections(info: ModelInfo, outputs: dict[str, np.ndarray]) -> list[list[Detection]]:
    result = []
    for i, n in enumerate(outputs["num_detections"][:, 0]):
        boxes, scores, classes = outputs["boxes"][i, :n], outputs["scores"][i, :n], outputs["classes"][i, :n]
        result.append([Detection(info.label(int(c)), int(c), float(s), tuple(float(v) for v in b))
                       for b, s, c in zip(boxes, scores, classes)])
    return result


def grpc_target(url: str) -> tuple[str, list[tuple] | None]:
    """gRPC channel target and channel options for one replica or several.

    - "host:port": one server, tritonclient's default channel.
    - "h1:8001,h2:8001,...": several replicas; names are resolved here to addresses once and the
      list goes to gRPC's static resolver ("ipv4:"/"ipv6:"), with gRPC's own round_robin balancing.
    - "dns:///name:port": gRPC's DNS resolver (e.g. a Kubernetes headless Service), round_robin.
    round_robin skips a replica whose connection failed and reconnects to it in the background; the
    client's retry of UNAVAILABLE then lands on another replica.
    """
    import socket

    if not ("," in url or url.startswith("dns:")):
        return url, None
    # A replica that comes back should rejoin within seconds: gRPC's default reconnect backoff grows to 120 s.
    options = [("grpc.lb_policy_name", "round_robin"),
               ("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 2000),
               ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
    if url.startswith("dns:"):
        return url, options
    v4, v6 = [], []
    for part in (p.strip() for p in url.split(",") if p.strip()):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"replica {part!r} in {url!r}: expected host:port")
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ValueError(f"replica {part!r}: cannot resolve {host!r} ({e})") from None
        family, *_, addr = infos[0]
        (v6 if family == socket.AF_INET6 else v4).append(
            f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}")
    if v4 and v6:
        raise ValueError(f"{url!r}: mix of IPv4 and IPv6 replicas; gRPC's static resolver takes one family")
    return ("ipv6:" + ",".join(v6)) if v6 else ("ipv4:" + ",".join(v4)), options


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
