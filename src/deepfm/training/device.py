"""Where and how training runs: threads, determinism, the device, mixed precision."""

from __future__ import annotations

import torch

from deepfm.config import TrainConfig
from deepfm.training.objectives import TrainingError
from deepfm.utils import physical_cores


def threads_per_process(cfg: TrainConfig, world: int = 1) -> int:
    """train.num_threads (per process), or 0: the physical cores shared out evenly among the
    `world` processes that train (two processes that each use every core make OpenMP threads
    spin against each other)."""
    return cfg.num_threads or max(1, physical_cores() // world)


def setup_torch(
    cfg: TrainConfig, seed: int, world: int = 1, local_rank: int | None = None
) -> tuple[int, torch.device]:
    """Threads, determinism and device. Returns (threads, device).

    world, local_rank: of a multi-process run (training.distributed); on CUDA, process
    local_rank takes GPU local_rank."""
    threads = threads_per_process(cfg, world)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = cfg.device
    if device == "auto":
        mps = torch.backends.mps.is_available()
        device = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "params.yaml: 'train.device' is 'cuda' but no CUDA device is visible; "
            "set train.device to 'cpu' or 'auto'."
        )
    if device == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"process {local_rank} of a multi-process run has no GPU of its own "
                f"({torch.cuda.device_count()} visible): lower train.processes."
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if cfg.amp and not device.startswith("cuda"):
        raise TrainingError(
            f"params.yaml: 'train.amp' is true but training runs on {device}; mixed precision "
            "is for CUDA only. Set train.amp to false, or train.device to 'cuda' / 'auto' on a "
            "machine with a CUDA GPU."
        )
    return threads, torch.device(device)
