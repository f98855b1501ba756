"""Stage split: canonical tables -> leave-one-out split, fixed evaluation candidates and
encoded feature matrices in data/split/ (the evaluation protocol)."""

import json
from pathlib import Path

import pandas as pd

from deepfm.config import load_config
from deepfm.data.split import split_dataset, write_split
from deepfm.utils import run_stage

PROCESSED, SPLIT = Path("data/processed"), Path("data/split")


def main() -> None:
    cfg = load_config()
    tables = {
        n: pd.read_parquet(PROCESSED / f"{n}.parquet") for n in ("interactions", "users", "items")
    }
    result = split_dataset(
        tables["interactions"],
        tables["users"],
        tables["items"],
        seed=cfg.seed,
        min_positives=cfg.split.min_positives,
        num_negatives=cfg.eval.num_negatives,
        history_length=cfg.split.history_length,
        sequence=cfg.split.sequence,
        tie_break=cfg.split.tie_break,
    )
    write_split(result, SPLIT)
    print("split:", json.dumps(result.summary))


if __name__ == "__main__":
    run_stage(main)
