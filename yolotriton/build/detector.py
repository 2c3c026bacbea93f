"""What every import produces: a TF-callable model and its DetectorSpec (the importers' common output).

Its own module so the importers (darknet.py, importer.py) and the exporter depend on it, not on each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .spec import DetectorSpec


@dataclass
class ImportedDetector:
    """A model that maps float32 NHWC RGB images in [0,1] to the outputs its spec names."""

    model: object  # keras.Model, tf_keras.Model or a SavedModel signature wrapper
    spec: DetectorSpec
    source: str
    call: Callable | None = None  # images tensor -> list of outputs in spec order; default: model(x)
    trackable: object = None  # what a SavedModel must keep alive (variables)
    declared_layout: bool = False  # the source states the layout exactly (a darknet cfg): the layout gate only informs
    accept_layout: bool = False  # --accept-layout: the user vouches for the layout; the gate's doubts become warnings
    recognised: str = ""  # a known package's model (importer.recognise): its layout comes from that package
    nms_rule: dict = field(default_factory=dict)  # the NMS the source declares (a darknet cfg's nms_kind, beta_nms)
    _graph: object = field(default=None, init=False, repr=False, compare=False)  # predict's traced call

    def __call__(self, images):
        if self.call is not None:
            return self.call(images)
        out = self.model(images, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def predict(self, images: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
        """Run in TensorFlow (the reference for the export parity gate), traced once as a graph: TF frees each
        activation when it is used (an eager call of YOLOv4 608 held 1.6 GB per image, the graph 0.25 GB; the
        same numbers to the bit). The export traces the same call for its SavedModel."""
        import tensorflow as tf

        if self._graph is None:
            self._graph = tf.function(lambda t: self(t), reduce_retracing=True)
        chunks: list[list[np.ndarray]] = []
        for i in range(0, len(images), batch_size):
            chunks.append([np.asarray(o) for o in self._graph(images[i:i + batch_size])])
        return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(self.spec.output_names)}
