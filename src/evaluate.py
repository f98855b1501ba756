"""Stage eval: models/model.pt + data/split/ -> metrics/eval.json (every metric of the
protocol, for the validation and test splits) and metrics/eval_ranks.parquet (per-user
ranks, for paired comparisons between runs)."""

from pathlib import Path

import pandas as pd
import torch

from deepfm.config import load_config
from deepfm.data.sampling import RatedIndex
from deepfm.data.split import read_split
from deepfm.io import write_json, write_parquet
from deepfm.training.evaluate import evaluate_split
from deepfm.training.loop import load_model
from deepfm.utils import environment, physical_cores, run_stage

SPLIT, MODEL = Path("data/split"), Path("models/model.pt")
METRICS, RANKS = Path("metrics/eval.json"), Path("metrics/eval_ranks.parquet")


def main() -> None:
    cfg = load_config()
    threads = cfg.train.num_threads or physical_cores()
    torch.set_num_threads(threads)
    split = read_split(SPLIT)
    model, payload = load_model(MODEL)
    rated = RatedIndex(
        split.train_users, split.train_items, split.schema.num_users, split.schema.num_items
    )
    results = evaluate_split(model, split, rated, ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
    metrics = {
        name: {k: round(v, 6) if isinstance(v, float) else v for k, v in r.metrics.items()}
        for name, r in results.items()
    }
    metrics["model"] = payload["model"]
    metrics["checkpoint_epoch"] = int(payload["epoch"])
    metrics["parameters"] = model.num_parameters()
    metrics["environment"] = environment(threads)
    write_json(METRICS, metrics)

    frames = [
        pd.DataFrame(
            {
                "split": name,
                "user_id": split.user_ids[r.users],
                "item_id": split.item_ids[r.items],
                "sampled_rank": r.sampled_rank,
                "full_rank": r.full_rank,
                "num_candidates": r.num_candidates,
            }
        )
        for name, r in results.items()
    ]
    write_parquet(RANKS, pd.concat(frames, ignore_index=True))
    t = metrics["test"]
    print(
        f"eval: {payload['model']} test full_ndcg@10 {t['full_ndcg@10']:.4f}  "
        f"hr@10 {t['hr@10']:.4f}  ndcg@10 {t['ndcg@10']:.4f}  auc {t['auc']:.4f}"
    )


if __name__ == "__main__":
    run_stage(main)
