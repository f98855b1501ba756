"""Stage fetch: the official MovieLens zip (or $MOVIELENS_MIRROR/<dataset>.zip) -> data/raw/,
every member checked against its registered sha256."""

from pathlib import Path

from deepfm.config import load_config
from deepfm.data.sources import fetch
from deepfm.utils import run_stage

RAW = Path("data/raw")


def main() -> None:
    cfg = load_config()
    dest = fetch(cfg.dataset, RAW)
    print(f"fetch: {cfg.dataset} verified and extracted to {dest}")


if __name__ == "__main__":
    run_stage(main)
