"""The training path on a GPU, end to end: each model trains a few epochs on the real ML-100K
split (`dvc repro` first) and prints its seconds per epoch and kept validation metrics.

Plain, or under `torchrun --standalone --nproc_per_node=N` (DDP, NCCL; rank 0 prints). It
calls the package's `train` as the train stage does, without dvclive, so it runs wherever
torch, numpy, pandas, pyarrow and pyyaml are installed (gpu_check.sh runs it).

    python benchmarks/gpu_train_check.py --models deepfm sasrec --epochs 3 \
        [--train device=cuda batch_size=65536 ...] [--model-params loss=bce_grouped]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from deepfm.config import load_config  # noqa: E402
from deepfm.data.splitting import read_split  # noqa: E402
from deepfm.training import distributed  # noqa: E402
from deepfm.training.loop import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deepfm"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model-params", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    e = args.epochs
    overrides = [
        f"train.{k}={v}"
        for k, v in (("device", "cuda"), ("epochs", e), ("min_epochs", e), ("val_every", e))
    ]
    overrides += [f"train.{item}" for item in args.train]  # after the defaults: they win
    overrides += [f"{name}.{item}" for name in args.models for item in args.model_params]
    cfg = load_config(ROOT / "params.yaml", overrides)
    split = read_split(ROOT / "data" / "split")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            start = time.perf_counter()
            outcome = train(
                dataclasses.replace(cfg, model=name), split, Path(tmp) / f"{name}.pt",
                progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            if not distributed.is_main():
                continue
            per_epoch = outcome.seconds_per_epoch
            row = {
                "model": name,
                "device": outcome.device,
                "processes": cfg.train.processes,
                "world": int(os.environ.get("WORLD_SIZE", 1)),  # torchrun's ranks
                "parameters": outcome.num_parameters,
                "epochs_run": outcome.epochs_run,
                "seconds_per_epoch": round(sum(per_epoch) / max(1, len(per_epoch)), 3),
                "wall_s": round(wall, 1),
                "val": {k: round(v, 4) for k, v in outcome.kept_val.items()},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if distributed.is_main() and args.out:
        Path(args.out).write_text(
            json.dumps({"overrides": overrides, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
