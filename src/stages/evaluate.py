"""Stage eval: the model checkpoint + the split -> every metric of the protocol for the
validation and test splits (--metrics, JSON) and per-user ranks (--ranks, parquet: paired
comparisons between runs; under the ctr protocol, each row's label and logit). Nothing is
trained here. `deepfm evaluate --checkpoint PATH` runs the same function on any checkpoint."""

from pathlib import Path

from deepfm.config import load_config
from deepfm.data.splitting import read_split
from deepfm.evaluation.protocol import evaluate_as_configured
from deepfm.io import write_json, write_parquet
from deepfm.utils import run_stage


def main(split: Path, model: Path, metrics: Path, ranks: Path) -> None:
    cfg = load_config()
    result = evaluate_as_configured(cfg, read_split(split), model, split_dir=split)
    write_json(metrics, result.metrics)
    write_parquet(ranks, result.ranks)
    print(f"eval: {result.summary}")


if __name__ == "__main__":
    run_stage(main, "split", "model", "metrics", "ranks")
