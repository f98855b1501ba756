"""The protocol's evaluation of one checkpoint on one split: what the eval stage writes
(metrics/eval.json and metrics/eval_ranks.parquet) and `deepfm evaluate --checkpoint` prints,
by the same function, so both give the same numbers for the same checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from deepfm.config import Config
from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import CTRSplit, SplitResult
from deepfm.evaluation.ranking import evaluate_split, user_sample
from deepfm.evaluation.rows import evaluate_rows
from deepfm.models.checkpoint import check_checkpoint_data, load_model
from deepfm.utils import environment, physical_cores


@dataclass
class CheckpointEvaluation:
    metrics: dict  # the content of metrics/eval.json: val, test, model, epoch, ...
    ranks: pd.DataFrame  # metrics/eval_ranks.parquet: per user (top-K) or per row (ctr)
    summary: str  # one line: the model and its main test metrics


def evaluate_as_configured(
    cfg: Config, data: SplitResult | CTRSplit, checkpoint: Path, split_dir: Path | str
) -> CheckpointEvaluation:
    """evaluate_checkpoint with what params.yaml sets: torch's threads (train.num_threads, 0:
    the physical cores; the thread count changes the bits), eval.ks, eval.batch_users,
    eval.sample_users and the seed. The eval stage and `deepfm evaluate` both call this."""
    threads = cfg.train.num_threads or physical_cores()
    torch.set_num_threads(threads)
    e = cfg.eval
    return evaluate_checkpoint(
        data,
        checkpoint,
        ks=e.ks,
        batch_users=e.batch_users,
        threads=threads,
        sample_users=e.sample_users,
        seed=cfg.seed,
        split_dir=split_dir,
    )


def evaluate_checkpoint(
    data: SplitResult | CTRSplit,
    checkpoint: Path,
    *,
    ks: list[int],
    batch_users: int,
    threads: int,
    split_dir: Path | str = "the split",
    sample_users: int = 0,
    seed: int = 0,
) -> CheckpointEvaluation:
    """Every metric of the protocol for the validation and test splits of `data`, from the
    model in `checkpoint` (which must have been trained on `data`), rounded to 6 decimals.
    `threads`: the torch threads the caller set (recorded in the environment).
    sample_users, seed: eval.sample_users (top-K: a seeded sample of the evaluation users)."""
    scorer, payload = load_model(checkpoint)
    check_checkpoint_data(payload, data, checkpoint, split_dir)
    sample = None
    if isinstance(data, CTRSplit) and sample_users:
        raise ValueError(
            "params.yaml: 'eval.sample_users' is set, but the ctr protocol scores every row; "
            "set eval.sample_users to 0."
        )
    if isinstance(data, CTRSplit):  # the ctr protocol: every row scored once
        results = {name: evaluate_rows(scorer, getattr(data, name)) for name in ("val", "test")}
        frames = [
            pd.DataFrame(
                {"split": name, "row": range(len(r.labels)), "label": r.labels, "logit": r.logits}
                | ({} if r.groups is None else {"group": r.groups})
            )
            for name, r in results.items()
        ]
        out = {name: _rounded(r.metrics) for name, r in results.items()}
        t = out["test"]
        gauc = f"  gauc {t['gauc']:.4f}" if "gauc" in t else ""
        summary = f"{payload['model']} test auc {t['auc']:.4f}  logloss {t['logloss']:.4f}{gauc}"
    else:
        rated = RatedIndex.of_train(data)
        sample = user_sample(len(data.val.users), sample_users, seed)
        results = evaluate_split(scorer, data, rated, ks=ks, batch_users=batch_users, sample=sample)
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
        out = {name: _rounded(r.metrics) for name, r in results.items()}
        t = out["test"]
        summary = (
            f"{payload['model']} test full_ndcg@10 {t['full_ndcg@10']:.4f}  "
            f"hr@10 {t['hr@10']:.4f}  ndcg@10 {t['ndcg@10']:.4f}  auc {t['auc']:.4f}"
        )
    out["model"] = payload["model"]
    out["checkpoint_epoch"] = int(payload["epoch"])
    out["parameters"] = scorer.num_parameters()
    if sample is not None:  # stated, so no one reads a sample's figures as the full protocol
        out["sample_users"] = {"users": len(sample), "of": len(data.val.users), "seed": seed}
    out["environment"] = environment(threads)
    return CheckpointEvaluation(out, pd.concat(frames, ignore_index=True), summary)


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
