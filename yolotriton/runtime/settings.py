"""A model's NMS rule and thresholds from its config's string parameters, and what one request may change
through its own parameters."""
from __future__ import annotations

import json

# What a request may change through its parameters (max_detections only down to 1, never above the configured).
OVERRIDABLE = ("score_threshold", "iou_threshold", "max_detections")
# The NMS rule (model config parameters; build_repo.py --nms-kind, --beta-nms, --best-class-only):
# "greedy": darknet's greedynms, class-aware IoU NMS (OpenCV's NMSBoxesBatched); "diou": darknet's diounms,
# which suppresses a box when IoU - (centre distance^2 / enclosing diagonal^2)^beta_nms exceeds the threshold.
NMS_KINDS = ("greedy", "diou")


def nms_options(params: dict[str, str]) -> dict:
    """Decoder keyword arguments for the NMS rule from a model config's string parameters (absent: greedy,
    darknet's beta_nms 0.6, every class above the threshold)."""
    kind = params.get("nms_kind", "greedy")
    if kind not in NMS_KINDS:
        raise ValueError(f"nms_kind {kind!r}: expected one of {', '.join(NMS_KINDS)}")
    return {"nms_kind": kind, "beta_nms": float(params.get("beta_nms", "0.6")),
            "best_class_only": params.get("best_class_only", "off") == "on",
            "best_class_first": params.get("best_class_first", "off") == "on",
            "inside_input_only": params.get("inside_input_only", "off") == "on"}


class Settings:
    """The configured thresholds (`defaults`); `settings(request_parameters)` -> one request's, checked."""

    def __init__(self, params: dict[str, str]):
        self.defaults = {"score_threshold": float(params["score_threshold"]),
                         "iou_threshold": float(params["iou_threshold"]),
                         "max_detections": int(params["max_detections"])}

    def settings(self, request_parameters: str) -> dict:
        """The settings of a request whose parameters are `request_parameters` (Triton's JSON text, maybe empty);
        ValueError/TypeError for text that is not JSON or a value out of range or of the wrong type."""
        parameters = json.loads(request_parameters or "{}")
        s = dict(self.defaults)
        for key in OVERRIDABLE:
            if key in parameters:
                s[key] = type(self.defaults[key])(parameters[key])
        if not 0.0 <= s["score_threshold"] <= 1.0 or not 0.0 <= s["iou_threshold"] <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got score {s['score_threshold']}, iou {s['iou_threshold']}")
        if not 1 <= s["max_detections"] <= self.defaults["max_detections"]:
            raise ValueError(f"max_detections must be 1..{self.defaults['max_detections']}, got {s['max_detections']}")
        return s
