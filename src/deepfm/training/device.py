"""Where and how training runs: threads, determinism, the device, mixed precision."""

from __future__ import annotations

import torch

from deepfm.config import TrainConfig
from deepfm.training.objectives import TrainingError
from deepfm.utils import physical_cores


def setup_torch(cfg: TrainConfig, seed: int) -> tuple[int, torch.device]:
    """Threads, determinism and device. Returns (threads, device)."""
    threads = cfg.num_threads or physical_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    elif cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "params.yaml: 'train.device' is 'cuda' but no CUDA device is visible; "
            "set train.device to 'cpu' or 'auto'."
        )
    else:
        device = cfg.device
    if cfg.amp and device != "cuda":
        raise TrainingError(
            f"params.yaml: 'train.amp' is true but training runs on {device}; mixed precision "
            "is for CUDA only. Set train.amp to false, or train.device to 'cuda' / 'auto' on a "
            "machine with a CUDA GPU."
        )
    return threads, torch.device(device)
