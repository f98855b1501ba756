"""Small shared helpers: seeded generators, thread setup, environment facts."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import threading
import zlib
from collections.abc import Iterator

import numpy as np


def rng_for(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """An independent generator for one purpose, derived from the global seed.

    Every random draw in the pipeline takes its own stream, so changing how many numbers one
    part draws never shifts another part's randomness.
    """
    return np.random.default_rng([seed, zlib.crc32(purpose.encode()), *keys])


def available_cores() -> int:
    """The logical cores this process may use (a container's or taskset's limit, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads don't speed up matmuls)."""
    logical = available_cores()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        pairs = {
            (block.split("physical id")[1].split("\n")[0], block.split("core id")[1].split("\n")[0])
            for block in text.split("\n\n")
            if "core id" in block and "physical id" in block
        }
        if pairs:
            return max(1, min(len(pairs), logical or 1))
    except OSError:
        pass
    return max(1, logical or 1)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) or SIGTERM sets the yielded flag instead of raising wherever the main
    thread happens to be (inside a save, a finalizer, a C call); the caller checks the flag at
    safe points and stops there. A second signal raises at once. Off the main thread, where
    Python cannot install handlers, signals keep their default behaviour."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def environment(num_threads: int) -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
        "threads": num_threads,
        "platform": f"{platform.system()}-{platform.machine()}",
        # the kernels the numbers were computed with (deepfm.REPRODUCIBLE_KERNELS)
        "kernels": {
            "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
            "aten": torch.backends.cpu.get_cpu_capability(),
            "dynamic_threads": {v: os.environ.get(v, "") for v in ("MKL_DYNAMIC", "OMP_DYNAMIC")},
        },
    }


# The errors a stage reports as one message (exit 2), by module. They are looked up only in
# modules the stage has already imported: an error of a module never imported cannot have
# been raised, and importing them all up front cost fetch / preprocess / split the ~1.3 s
# of importing torch.
EXPECTED_ERRORS = {
    "deepfm.config": "ConfigError",
    "deepfm.data.sources": "FetchError",
    "deepfm.data.movielens": "ParseError",
    "deepfm.training.loop": "TrainingError",
    "deepfm.models.checkpoint": "CheckpointError",
}


def run_stage(main, *paths: str) -> None:
    """Run a stage's main(**paths); expected failures become one clear message and exit code 2.

    `paths` names the artefacts the stage reads and writes; each comes from the command line
    as `--name PATH` (dvc.yaml, the one place that names them, passes them).
    """
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description=(main.__module__ or "").strip() or None)
    for name in paths:
        parser.add_argument(f"--{name}", type=Path, required=True, metavar="PATH")
    args = vars(parser.parse_args())
    try:
        main(**args)
    except Exception as e:
        expected = tuple(
            getattr(sys.modules[module], name)
            for module, name in EXPECTED_ERRORS.items()
            if module in sys.modules
        )
        if not isinstance(e, (*expected, FileNotFoundError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted: outputs written so far are complete; rerun `dvc repro`.", file=sys.stderr
        )
        sys.exit(130)
