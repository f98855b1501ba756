"""Which epoch to keep: checkpoint-selection rules compared on the VALIDATION split only.

Picking the best of ~40 noisy validation scores also picks noise, so a rule cannot be judged by
the validation score it selected. Here each seed trains the full schedule once (no early stop),
recording every validation user's full rank after every epoch; then, many times over, the
validation users are split in two random halves: a rule picks its epoch on one half and is
scored (full-ranking NDCG@10) on the other. Run by hand after `dvc repro`:

    python benchmarks/checkpoint_rule.py [--seeds 1 2 3 4] [--jobs 2] [-S train.epochs=30]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def early_stop_pick(curve: np.ndarray, min_epochs: int, patience: int) -> int:
    """The epoch (1-based) the training loop's best-epoch rule keeps, replayed on a curve."""
    best, best_epoch, bad = -np.inf, 0, 0
    for epoch, value in enumerate(curve, 1):
        if epoch > min_epochs and bad >= patience:
            break
        if value > best:
            best, best_epoch, bad = value, epoch, 0
        else:
            bad += 1
    return best_epoch


RULES = {
    "last epoch": lambda c: len(c),
    "best epoch, early stop (min 20, patience 10)": lambda c: early_stop_pick(c, 20, 10),
    "best epoch, early stop (min 20, patience 5)": lambda c: early_stop_pick(c, 20, 5),
    "best of all epochs": lambda c: int(np.argmax(c)) + 1,
    "best of the last 5 epochs": lambda c: len(c) - 5 + int(np.argmax(c[-5:])) + 1,
}


def ranks_per_epoch(args: tuple) -> np.ndarray:
    """Train one seed for all epochs; (epochs, users) validation full ranks."""
    seed, overrides, threads = args
    import torch
    from sweep import Curve, merge

    import deepfm.training.loop as loop
    from deepfm.config import parse_config
    from deepfm.data.splitting import read_split

    torch.set_num_threads(threads)
    raw = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    raw["seed"] = seed
    raw["train"]["num_threads"] = threads
    raw["train"]["min_epochs"] = raw["train"]["epochs"]
    raw["train"]["val_every"] = 1  # the rules need every epoch's validation
    cfg = parse_config(raw, require_all=True)
    ranks = []
    evaluate = loop.evaluate_held_out

    def recording(*a, **k):  # the loop's validation, keeping the per-user ranks
        result = evaluate(*a, **k)
        ranks.append(result.full_rank.copy())
        return result

    loop.evaluate_held_out = recording
    ckpt = Path(f"/tmp/checkpoint-rule-{seed}-{mp.current_process().pid}.pt")
    loop.train(cfg, read_split(ROOT / "data" / "split"), ckpt, live=Curve(), progress=False)
    ckpt.unlink(missing_ok=True)
    return np.stack(ranks)


def parse_overrides(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--halvings", type=int, default=50)
    ap.add_argument("-S", dest="set", action="append", default=[], help="override, a.b=value")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/checkpoint_rule.json")
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        per_seed = pool.map(ranks_per_epoch, [(s, overrides, args.threads) for s in args.seeds])
    rng = np.random.default_rng(0)
    scores: dict[str, list[tuple[float, int]]] = {name: [] for name in RULES}
    for ranks in per_seed:
        gain = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)  # (epochs, users)
        for _ in range(args.halvings):
            perm = rng.permutation(gain.shape[1])
            halves = (perm[: len(perm) // 2], perm[len(perm) // 2 :])
            for pick_on, score_on in (halves, halves[::-1]):
                curve = gain[:, pick_on].mean(1)
                for name, rule in RULES.items():
                    epoch = rule(curve)
                    scores[name].append((float(gain[epoch - 1, score_on].mean()), epoch))
    result = {
        "seeds": args.seeds,
        "overrides": overrides,
        "halvings": args.halvings,
        "rules": {
            name: {
                "held_out_half_full_ndcg@10": float(np.mean([s for s, _ in v])),
                "mean_epoch": float(np.mean([e for _, e in v])),
            }
            for name, v in scores.items()
        },
    }
    print(f"seeds {args.seeds}, overrides {overrides or 'none'}, {args.halvings} halvings each")
    print(f"{'rule':<46} {'held-out half NDCG@10':>22} {'mean epoch':>11}")
    for name, r in result["rules"].items():
        print(f"{name:<46} {r['held_out_half_full_ndcg@10']:>22.4f} {r['mean_epoch']:>11.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
