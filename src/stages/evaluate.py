"""Stage eval: the model checkpoint + the split -> every metric of the protocol for the
validation and test splits (--metrics, JSON) and per-user ranks (--ranks, parquet: paired
comparisons between runs; under the ctr protocol, each row's label and logit). Nothing is
trained here."""

from pathlib import Path

import pandas as pd
import torch

from deepfm.config import load_config
from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import CTRSplit, read_split
from deepfm.evaluation.ranking import evaluate_split
from deepfm.evaluation.rows import evaluate_rows
from deepfm.io import write_json, write_parquet
from deepfm.training.checkpoint import load_model
from deepfm.utils import environment, physical_cores, run_stage


def main(split: Path, model: Path, metrics: Path, ranks: Path) -> None:
    cfg = load_config()
    threads = cfg.train.num_threads or physical_cores()
    torch.set_num_threads(threads)
    data = read_split(split)
    scorer, payload = load_model(model)
    if isinstance(data, CTRSplit):  # the ctr protocol: every row scored once
        results = {name: evaluate_rows(scorer, getattr(data, name)) for name in ("val", "test")}
        out = {name: _rounded(r.metrics) for name, r in results.items()}
        frames = [
            pd.DataFrame(
                {"split": name, "row": range(len(r.labels)), "label": r.labels, "logit": r.logits}
                | ({} if r.groups is None else {"group": r.groups})
            )
            for name, r in results.items()
        ]
        _write(metrics, ranks, out, frames, payload, scorer, threads)
        t = out["test"]
        gauc = f"  gauc {t['gauc']:.4f}" if "gauc" in t else ""
        print(f"eval: {payload['model']} test auc {t['auc']:.4f}  logloss {t['logloss']:.4f}{gauc}")
        return
    rated = RatedIndex(
        data.train_users, data.train_items, data.schema.num_users, data.schema.num_items
    )
    results = evaluate_split(scorer, data, rated, ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
    out = {name: _rounded(r.metrics) for name, r in results.items()}
    frames = [
        pd.DataFrame(
            {
                "split": name,
                "user_id": data.user_ids[r.users],
                "item_id": data.item_ids[r.items],
                "sampled_rank": r.sampled_rank,
                "full_rank": r.full_rank,
                "num_candidates": r.num_candidates,
            }
        )
        for name, r in results.items()
    ]
    _write(metrics, ranks, out, frames, payload, scorer, threads)
    t = out["test"]
    print(
        f"eval: {payload['model']} test full_ndcg@10 {t['full_ndcg@10']:.4f}  "
        f"hr@10 {t['hr@10']:.4f}  ndcg@10 {t['ndcg@10']:.4f}  auc {t['auc']:.4f}"
    )


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def _write(metrics: Path, ranks: Path, out: dict, frames, payload, scorer, threads) -> None:
    out["model"] = payload["model"]
    out["checkpoint_epoch"] = int(payload["epoch"])
    out["parameters"] = scorer.num_parameters()
    out["environment"] = environment(threads)
    write_json(metrics, out)
    write_parquet(ranks, pd.concat(frames, ignore_index=True))


if __name__ == "__main__":
    run_stage(main, "split", "model", "metrics", "ranks")
