"""Where a GPU stub's time goes, stage by stage, measured under load (copied into the GPU detector's and
the GPU preprocess's model folders; off unless YOLOTRITON_STAGE_TIMES names a folder).

Entry point: `StageTimes.for_process(cudart, stream, label)` -> an object with `start()`, `mark(stage)`
and `finish(images)`, called once per execute. On, each mark records a CUDA event on the instance's
stream and the thread's CPU time; after the execute's last synchronize, `finish` adds the GPU time
between consecutive events (cudaEventElapsedTime: the stream's own time in that stage) and the CPU
time to running sums, which each stub process writes to FOLDER/<label>-<pid>.json at most once a
second. bench/gpu.py reads the sums before and after a load level and reports ms per image per stage.
Off, the same calls do nothing.
"""
from __future__ import annotations

import json
import os
import time

ENV = "YOLOTRITON_STAGE_TIMES"


class _Off:
    def start(self):
        pass

    def mark(self, stage: str, stream: int | None = None):
        pass

    def finish(self, images: int):
        pass


OFF = _Off()


class StageTimes:
    def __init__(self, cudart, stream: int, path: str):
        self.cudart, self.stream, self.path = cudart, stream, path
        self.pool: list = []  # CUDA events, reused every execute (the stream is synchronized before the next)
        self.marks: list[tuple[str, float]] = []
        self.sums: dict[str, list[float]] = {}  # stage -> [gpu ms, cpu ms]
        self.executes = self.images = 0
        self.written = 0.0

    @classmethod
    def for_process(cls, cudart, stream: int, label: str):
        folder = os.environ.get(ENV)
        if not folder or cudart is None:
            return OFF
        os.makedirs(folder, exist_ok=True)
        return cls(cudart, stream, os.path.join(folder, f"{label}-{os.getpid()}.json"))

    def _event(self, i: int):
        while len(self.pool) <= i:
            err, ev = self.cudart.cudaEventCreate()
            if int(err) != 0:
                raise RuntimeError(f"cudaEventCreate: {err}")
            self.pool.append(ev)
        return self.pool[i]

    def start(self):
        self.marks = []
        self.mark("")

    def mark(self, stage: str, stream: int | None = None):
        """The end of `stage`, on `stream` (default the instance's; the preprocess marks its own, which it
        synchronizes before the network starts, so consecutive events still follow one timeline)."""
        self.cudart.cudaEventRecord(self._event(len(self.marks)), self.stream if stream is None else stream)
        self.marks.append((stage, time.thread_time()))

    def finish(self, images: int):
        """After the stream was synchronized: accumulate this execute's stages."""
        if len(self.marks) < 2:
            return
        self.cudart.cudaEventSynchronize(self.pool[len(self.marks) - 1])
        for i in range(1, len(self.marks)):
            err, ms = self.cudart.cudaEventElapsedTime(self.pool[i - 1], self.pool[i])
            stage, cpu = self.marks[i]
            s = self.sums.setdefault(stage, [0.0, 0.0])
            s[0] += float(ms) if int(err) == 0 else 0.0
            s[1] += (cpu - self.marks[i - 1][1]) * 1000
        self.executes += 1
        self.images += images
        now = time.monotonic()
        if now - self.written > 1.0:
            self.written = now
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"executes": self.executes, "images": self.images, "stages": self.sums}, f)
            os.replace(tmp, self.path)


def read_sums(folder: str) -> dict[str, dict]:
    """Every stub's sums in `folder`: {file label: {executes, images, stages}}."""
    out = {}
    if folder and os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(folder, name)) as f:
                        out[name[:-5]] = json.load(f)
                except (OSError, ValueError):
                    pass
    return out


def summarize(before: dict, after: dict) -> tuple[int, int, dict[str, list[float]]]:
    """(executes, images, stage -> [gpu ms, cpu ms]) summed over processes between two read_sums."""
    executes = images = 0
    stages: dict[str, list[float]] = {}
    for key, a in after.items():
        b = before.get(key, {"executes": 0, "images": 0, "stages": {}})
        executes += a["executes"] - b["executes"]
        images += a["images"] - b["images"]
        for stage, (g, c) in a["stages"].items():
            bg, bc = b["stages"].get(stage, (0.0, 0.0))
            s = stages.setdefault(stage, [0.0, 0.0])
            s[0] += g - bg
            s[1] += c - bc
    return executes, images, stages
