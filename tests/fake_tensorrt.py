"""FAKE TensorRT module for argument plumbing only.

TensorRT 10/11 cannot be installed on this project's machines; TensorRT-RTX (tests/test_tensorrt.py) builds
real engines with the same builder code and covers parsing, strong typing, profiles and network I/O. This
stand-in is kept for what no real builder here reaches: TensorRT 10's precision flag (BuilderFlag.FP16),
the timing cache, and the refusal of a too-old TensorRT. It builds nothing and is never presented as a
working build: its "plan" bytes are a marker string.
"""
from __future__ import annotations

from enum import IntEnum
from types import SimpleNamespace


class FakeTensorRT:
    def __init__(self, version="10.5.0", parse_ok=True):
        self.__version__ = version
        self.calls: list[tuple] = []
        self.parse_ok = parse_ok
        fake = self

        class Logger:
            WARNING = "WARNING"

            def __init__(self, level):
                fake.calls.append(("Logger", level))

        class NetworkDefinitionCreationFlag(IntEnum):
            EXPLICIT_BATCH = 0
            STRONGLY_TYPED = 5

        class MemoryPoolType(IntEnum):
            WORKSPACE = 0

        class BuilderFlag(IntEnum):
            FP16 = 0

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                fake.calls.append(("set_shape", name, mn, opt, mx))

        class Cache:
            def serialize(self):
                return b"FAKE-TIMING-CACHE"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, p):
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", bytes(data)))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return SimpleNamespace(num_inputs=0, num_outputs=0)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                return b"FAKE PLAN - NOT A TENSORRT ENGINE"

        class OnnxParser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                return fake.parse_ok

            def get_error(self, i):
                return f"fake parser error {i}"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag, self.MemoryPoolType, self.BuilderFlag = (
            NetworkDefinitionCreationFlag, MemoryPoolType, BuilderFlag)

    def called(self, name):
        return [c for c in self.calls if c[0] == name]
