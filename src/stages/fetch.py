"""Stage fetch: the dataset's files (official MovieLens zip, $MOVIELENS_MIRROR/<dataset>.zip,
or a declared local file) -> the raw folder, every file checked against its sha256."""

from pathlib import Path

from deepfm.config import load_config
from deepfm.data.canonical import fetch_dataset
from deepfm.utils import run_stage


def main(raw: Path) -> None:
    cfg = load_config()
    dest = fetch_dataset(cfg.dataset_spec, raw)
    print(f"fetch: {cfg.dataset} verified and extracted to {dest}")


if __name__ == "__main__":
    run_stage(main, "raw")
