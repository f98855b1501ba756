"""Choose the co-occurrence blend's weight on the VALIDATION split (run by hand).

For each checkpoint, ranks by model score + a * log(s + 0.001) for every weight a, s the item
co-occurrence score of layers.CooccurrenceScore (window 10, each user's own pairs left out),
and prints validation full-ranking NDCG@10, then the mean over checkpoints per weight. A
checkpoint that already carries a fixed co-occurrence term has it set to 0 first, so the
network alone is blended. Works for any trained model of the top-K protocol (SASRec too):

    python benchmarks/cooccurrence_weight.py ckpt1.pt ckpt2.pt ... --weights 0 1 1.5 2 3

This is how round 11 of docs/tuning-log.md chose deepfm.cooccurrence_weight (the round-6
DeepFM checkpoints of seeds 1-5). `--test` also prints test NDCG@10: only for reporting a
weight already chosen, never for choosing one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import read_split
from deepfm.evaluation.ranking import evaluate_split
from deepfm.models.layers import CooccurrenceScore
from deepfm.training.checkpoint import check_checkpoint_data, load_model

ROOT = Path(__file__).resolve().parents[1]


class Blend(nn.Module):
    """model + weight * log(s + EPS); both score matrices kept per block of users, so every
    weight after the first costs only the ranking."""

    def __init__(self, model, term: CooccurrenceScore):
        super().__init__()
        self.model, self.term, self.weight = model, term, 0.0
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def score_matrix(self, users, items, history):
        key = (tuple(users.tolist()), history.numpy().tobytes())
        if key not in self.cache:
            scores = self.model.score_matrix(users, items, history).float()
            codes = self.model.item_id_codes()[items]
            log_s = self.term.matrix(users, self.model.history_of(history), codes)  # weight 1
            self.cache[key] = (scores, log_s)
        scores, log_s = self.cache[key]
        return scores + self.weight * log_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--weights", nargs="+", type=float, default=[0, 0.5, 1, 1.5, 2, 3, 4])
    p.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--test", action="store_true", help="also print test (reporting only)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    split = read_split(args.split)
    rated = RatedIndex.of_train(split)
    which = ("val", "test") if args.test else ("val",)
    table = {w: {name: [] for name in which} for w in args.weights}
    for path in args.checkpoints:
        model, payload = load_model(path)
        check_checkpoint_data(payload, split, path, args.split)
        if getattr(model, "cooccurrence", None) is not None:
            if model.cooccurrence.learned:
                raise SystemExit(f"{path}: its co-occurrence weight is learned; nothing to blend.")
            model.cooccurrence.weight.zero_()
        term = CooccurrenceScore(
            split.schema.field("item_id").vocab_size, model.history_length, args.window, 1.0
        ).eval()
        mask = split.sequence_mask()
        codes = model.item_id_codes().numpy()[split.train_items[mask]]
        term.fit(split.train_users[mask].astype(np.int64), codes)
        blend = Blend(model, term)
        for w in args.weights:
            blend.weight = w
            res = evaluate_split(blend, split, rated, ks=[10], batch_users=32, which=which)
            cells = []
            for name in which:
                value = res[name].metrics["full_ndcg@10"]
                table[w][name].append(value)
                cells.append(f"{name} {value:.4f}")
            print(f"{path} ({payload['model']}): weight {w:g}: " + "  ".join(cells), flush=True)
    print(f"\nmean over {len(args.checkpoints)} checkpoints, full NDCG@10:")
    for w, cols in table.items():
        print(f"  weight {w:g}: " + "  ".join(f"{n} {np.mean(v):.4f}" for n, v in cols.items()))


if __name__ == "__main__":
    main()
