"""Hyper-parameter search on the VALIDATION split only (run by hand; never looks at test).

Each trial = params.yaml + overrides, trained for `train.epochs` with early stopping turned
off (min_epochs = epochs), scored by validation full-ranking NDCG@10: the best epoch's value
and the mean of the last 10 epochs (less noisy). Trials run in parallel processes, which is
what makes a GPU worth it for models this small.

    python benchmarks/sweep.py benchmarks/grids/deepfm.yaml --seeds 1 2 --jobs 8 --device cuda

A grid file is a YAML list of override mappings, e.g. `- {train: {learning_rate: 0.001}}`.
Results go to benchmarks/results/sweep-<grid name>.jsonl, one line per trial.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Curve:
    """Stands in for dvclive: keeps the per-epoch validation values."""

    def __init__(self):
        self.rows, self.row = [], {}

    def log_metric(self, name, value):
        self.row[name] = value

    def next_step(self):
        self.rows.append(self.row)
        self.row = {}


def run_trial(args: tuple) -> dict:
    override, seed, device, threads = args
    import torch

    from deepfm.config import parse_config
    from deepfm.data.split import read_split
    from deepfm.training.loop import train

    torch.set_num_threads(threads)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = merge(base, override)
    raw["seed"] = seed
    raw["train"]["device"] = device
    raw["train"]["num_threads"] = threads
    raw["train"]["min_epochs"] = raw["train"]["epochs"]
    cfg = parse_config(raw, require_all=True)
    split = read_split(ROOT / "data" / "split")
    curve = Curve()
    start = time.perf_counter()
    out = train(
        cfg, split, Path(f"/tmp/sweep-{mp.current_process().pid}.pt"), live=curve, progress=False
    )
    scores = [r["val/full_ndcg@10"] for r in curve.rows]
    hrs = [r["val/hr@10"] for r in curve.rows]
    tail = scores[-10:]
    return {
        "override": override,
        "seed": seed,
        "model": cfg.model,
        "best_epoch": out.best_epoch,
        "val_full_ndcg@10_best": max(scores),
        "val_hr@10_at_best": hrs[out.best_epoch - 1],
        "val_full_ndcg@10_last10": sum(tail) / len(tail),
        "val_hr@10_last10": sum(hrs[-10:]) / len(hrs[-10:]),
        "seconds": round(time.perf_counter() - start, 1),
        "curve": [round(s, 4) for s in scores],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    grid = yaml.safe_load(args.grid.read_text())
    trials = [(o or {}, s, args.device, args.threads) for o in grid for s in args.seeds]
    out = args.out or ROOT / "benchmarks" / "results" / f"sweep-{args.grid.stem}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    results = []
    with ctx.Pool(args.jobs) as pool, open(out, "w") as f:
        for r in pool.imap(run_trial, trials):
            results.append(r)
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(
                f"{json.dumps(r['override']):<70} seed {r['seed']}: best "
                f"{r['val_full_ndcg@10_best']:.4f} @ {r['best_epoch']:>2}, last10 "
                f"{r['val_full_ndcg@10_last10']:.4f}, hr@10 {r['val_hr@10_last10']:.4f} "
                f"({r['seconds']} s)",
                flush=True,
            )
    print("\nmean over seeds (validation full-ranking NDCG@10, last 10 epochs | best epoch):")
    keys = []
    for r in results:
        k = json.dumps(r["override"], sort_keys=True)
        if k not in keys:
            keys.append(k)
    summary = []
    for k in keys:
        rs = [r for r in results if json.dumps(r["override"], sort_keys=True) == k]
        last10 = sum(r["val_full_ndcg@10_last10"] for r in rs) / len(rs)
        best = sum(r["val_full_ndcg@10_best"] for r in rs) / len(rs)
        hr = sum(r["val_hr@10_last10"] for r in rs) / len(rs)
        summary.append((last10, best, hr, k))
    for last10, best, hr, k in sorted(summary, reverse=True):
        print(f"  {last10:.4f} | {best:.4f} | hr@10 {hr:.4f}  {k}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
