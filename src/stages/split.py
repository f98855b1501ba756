"""Stage split: canonical tables -> leave-one-out split, fixed evaluation candidates and
encoded feature matrices (the evaluation protocol, docs/protocol.md)."""

import json
from pathlib import Path

from deepfm.config import load_config
from deepfm.data.splitting import split_processed, write_split
from deepfm.utils import run_stage


def main(processed: Path, split: Path) -> None:
    result = split_processed(load_config(), processed)
    write_split(result, split)
    print("split:", json.dumps(result.summary))


if __name__ == "__main__":
    run_stage(main, "processed", "split")
