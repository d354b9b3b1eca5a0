"""Test setup: 8 fake CPU devices, offline hubs, a persistent compilation cache.

Environment variables must be set before jax is imported anywhere.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The suite is bound by XLA:CPU compiles, and LLVM's optimisation is much of each: the tests
# compile at -O0 (measured on tests/orchestration/test_experiment.py + tests/golden, cold cache:
# 181 s against 228 s; the golden record of outputs stays bitwise equal). Runs keep XLA's
# default. Subprocesses get the same flag through ``xla_flags``.
COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None) -> str:
    """``XLA_FLAGS`` of a test process: ``devices`` fake CPU devices (None: one) and the
    tests' compile flags."""
    return (f"--xla_force_host_platform_device_count={devices} " if devices else "") + COMPILE_FLAGS


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KAIROS_CACHE", str(ROOT / ".cache" / "kairos"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def one_device():
    """The first CPU device only (single-device runs beside the 8 fake devices)."""
    return jax.devices()[:1]


# The slowest files (module fixtures that train several runs) start first: with
# `--dist loadfile` each file runs in one worker, and a long file scheduled last leaves the
# other worker idle at the end (measured: ~3 min of the CI wall time).
SLOWEST_FIRST = ("tests/launch/test_multiprocess.py", "tests/orchestration/test_scenes_training.py",
                 "tests/launch/test_distill.py", "tests/launch/test_finetune.py",
                 "tests/distill/test_training.py", "tests/launch/test_sample_evaluate.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
