"""Stage split: canonical tables -> leave-one-out split, fixed evaluation candidates and
encoded feature matrices in data/split/ (the evaluation protocol)."""

import json
from pathlib import Path

from deepfm.config import load_config
from deepfm.data.split import split_processed, write_split
from deepfm.utils import run_stage

PROCESSED, SPLIT = Path("data/processed"), Path("data/split")


def main() -> None:
    result = split_processed(load_config(), PROCESSED)
    write_split(result, SPLIT)
    print("split:", json.dumps(result.summary))


if __name__ == "__main__":
    run_stage(main)
