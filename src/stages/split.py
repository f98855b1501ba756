"""Stage split: canonical tables -> leave-one-out split, fixed evaluation candidates and
encoded feature matrices (the evaluation protocol, docs/protocol.md)."""

import json
from pathlib import Path

from deepfm.config import load_config
from deepfm.data.rowsplit import split_ctr_stream
from deepfm.data.splitting import split_processed
from deepfm.utils import run_stage


def main(processed: Path, split: Path) -> None:
    cfg = load_config()
    spec = cfg.dataset_spec
    if spec.protocol == "ctr":  # streamed: bounded memory whatever the number of rows
        summary = split_ctr_stream(
            processed / "interactions.parquet",
            spec.fields,
            split,
            seed=cfg.seed,
            method=spec.ctr_split,
            fractions=spec.ctr_fractions,
            group=spec.ctr_group,
        )
        print("split:", json.dumps(summary))
        return
    result = split_processed(cfg, processed, split)  # written as it is made
    print("split:", json.dumps(result.summary))


if __name__ == "__main__":
    run_stage(main, "processed", "split")
