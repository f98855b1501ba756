"""Do two trained models rank differently? Average their scores and see (run by hand).

Ranks the VALIDATION split by w * z(A) + (1 - w) * z(B), z standardising each user's scores
over the catalogue (so a pointwise logit and a softmax logit are on one scale), and prints
full-ranking NDCG@10 of A, B and each average. An average well above both, and above the
average of two seeds of one model, says that B reads something A misses (round 13 of
docs/tuning-log.md: a DeepFM and a SASRec checkpoint of the same seed). A diagnostic only:
no reported model averages scores.

    python benchmarks/score_average.py deepfm.pt sasrec.pt --weights 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import read_split
from deepfm.evaluation.ranking import evaluate_split
from deepfm.models.checkpoint import check_checkpoint_data, load_model

ROOT = Path(__file__).resolve().parents[1]


def standardised(scores: torch.Tensor) -> torch.Tensor:
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True)


class Average(nn.Module):
    """w * z(A) + (1 - w) * z(B); both models' standardised scores kept per block of users,
    so every weight after the first costs only the ranking."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b, self.weight = a, b, 0.5
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def score_matrix(self, users, items, history):
        key = (tuple(users.tolist()), None if history is None else history.numpy().tobytes())
        if key not in self.cache:
            scores = [m.score_matrix(users, items, history).float() for m in (self.a, self.b)]
            self.cache[key] = tuple(standardised(s) for s in scores)
        za, zb = self.cache[key]
        return self.weight * za + (1 - self.weight) * zb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--weights", nargs="+", type=float, default=[0.5], help="w, A's share")
    p.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    split = read_split(args.split)
    rated = RatedIndex.of_train(split)
    models = []
    for path in (args.a, args.b):
        model, payload = load_model(path)
        check_checkpoint_data(payload, split, path, args.split)
        models.append(model.eval())
    average = Average(*models)
    for w in sorted({1.0, 0.0, *args.weights}, reverse=True):
        average.weight = w
        with torch.no_grad():
            res = evaluate_split(average, split, rated, ks=[10], batch_users=64, which=("val",))
        label = {1.0: f"A alone ({args.a})", 0.0: f"B alone ({args.b})"}.get(w, f"w = {w:g}")
        print(f"{label}: val full NDCG@10 {res['val'].metrics['full_ndcg@10']:.4f}", flush=True)


if __name__ == "__main__":
    main()
