"""Cost curve of the data stages at ML-20M scale, on synthetic data (run by hand).

Generates a synthetic interaction table in MovieLens-100K's file format (u.data / u.user /
u.item) at each requested size, with ML-20M-like shape (users and items grow with the number
of ratings; long-tailed item popularity and user activity), then measures, each size in a
fresh process:
- preprocess: parsing + validation into the canonical tables (deepfm.data.movielens);
- split: leave-one-out + 999 fixed candidates per evaluation user + encoders;
- negatives: one epoch of negative sampling (4 per train positive);
with wall time and peak RSS (VmHWM) after each step.

    python benchmarks/scale.py --ratings 1000000 10000000 20000000 [--keep DIR]

Synthetic files are for benchmarks only; they carry no MovieLens data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

GENRES = 19


def shape_for(n_ratings: int) -> tuple[int, int]:
    """Users and items for a table of n ratings, interpolating ML-1M (6,040 x 3,706 for 1M)
    and ML-20M (138,493 x 26,744 for 20M) on a log scale."""
    f = np.log(n_ratings / 1e6) / np.log(20)
    users = int(np.exp(np.log(6040) + f * (np.log(138_493) - np.log(6040))))
    items = int(np.exp(np.log(3706) + f * (np.log(26_744) - np.log(3706))))
    return max(users, 100), max(items, 100)


def generate(folder: Path, n_ratings: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_users, n_items = shape_for(n_ratings)
    folder.mkdir(parents=True, exist_ok=True)
    # long tails: Zipf-like item popularity and lognormal user activity
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item_p /= item_p.sum()
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity = np.maximum(20, activity / activity.sum() * n_ratings).astype(np.int64)
    activity = np.minimum(activity, n_items // 2)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < n_ratings:  # draw, drop duplicate (user, item) pairs, top up
        users = np.repeat(np.arange(n_users), activity)
        items = rng.choice(n_items, size=len(users), p=item_p)
        keys = np.unique(np.r_[keys, users * n_items + items])
    keys = rng.permutation(keys)[:n_ratings]
    table = pd.DataFrame({
        "user": keys // n_items + 1,
        "item": keys % n_items + 1,
        "rating": rng.integers(1, 6, len(keys)),
        "timestamp": rng.integers(800_000_000, 1_400_000_000, len(keys)),
    })  # fmt: skip
    table.to_csv(folder / "u.data", sep="\t", header=False, index=False)
    occupations = np.array(["student", "engineer", "writer", "other", "artist"])
    pd.DataFrame({
        "id": np.arange(1, n_users + 1), "age": rng.integers(7, 80, n_users),
        "gender": rng.choice(["M", "F"], n_users), "occ": rng.choice(occupations, n_users),
        "zip": rng.integers(10000, 99999, n_users),
    }).to_csv(folder / "u.user", sep="|", header=False, index=False)  # fmt: skip
    flags = (rng.random((n_items, GENRES)) < 0.1).astype(int)
    items = pd.DataFrame({
        "id": np.arange(1, n_items + 1), "title": [f"Item {i}" for i in range(1, n_items + 1)],
        "date": [f"01-Jan-{y}" for y in rng.integers(1920, 2015, n_items)], "video": "",
        "url": "http://x",
    })  # fmt: skip
    items = pd.concat([items, pd.DataFrame(flags)], axis=1)
    items.to_csv(folder / "u.item", sep="|", header=False, index=False, encoding="latin-1")
    return {
        "users": n_users,
        "items": n_items,
        "ratings": len(keys),
        "bytes": (folder / "u.data").stat().st_size,
    }


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(args: tuple) -> dict:
    folder, seed = args
    from deepfm.config import load_config
    from deepfm.data.batches import epoch_examples
    from deepfm.data.movielens import load_canonical
    from deepfm.data.sampling import RatedIndex
    from deepfm.data.splitting import split_dataset

    out = {}
    t = time.perf_counter()
    interactions, users, items = load_canonical("ml-100k", Path(folder), 4, 1980)
    out["preprocess_s"], out["preprocess_peak_mb"] = time.perf_counter() - t, peak_rss_mb()
    t = time.perf_counter()
    fields = load_config(ROOT / "params.yaml").datasets["ml-100k"].fields
    split = split_dataset(
        interactions, users, items, fields=fields, seed=seed, min_positives=3,
        num_negatives=999, history_length=10,
    )  # fmt: skip
    out["split_s"], out["split_peak_mb"] = time.perf_counter() - t, peak_rss_mb()
    out["eval_users"] = len(split.test.users)
    del interactions
    t = time.perf_counter()
    rated = RatedIndex(
        split.train_users, split.train_items, split.schema.num_users, split.schema.num_items
    )
    ex = epoch_examples(
        split, rated, seed=seed, epoch=1, negatives_per_positive=4, observed_negatives=False
    )
    out["negatives_s"], out["negatives_peak_mb"] = time.perf_counter() - t, peak_rss_mb()
    out["examples_per_epoch"] = len(ex[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratings", type=int, nargs="+", default=[1_000_000, 10_000_000, 20_000_000])
    ap.add_argument("--keep", type=Path, default=None, help="keep the synthetic files here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="deepfm-scale-"))
    rows = []
    print(
        f"{'ratings':>11}{'users':>9}{'items':>8}{'prep s':>8}{'split s':>9}{'neg s':>7}"
        f"{'peak MB':>9}"
    )
    try:
        for n in args.ratings:
            folder = base / f"synthetic-{n}"
            shape = generate(folder, n)
            ctx = mp.get_context("spawn")
            with ctx.Pool(1) as pool:  # a fresh process: peak RSS belongs to this size alone
                m = pool.apply(measure, ((str(folder), 42),))
            row = {**shape, **m}
            rows.append(row)
            peak = max(m["preprocess_peak_mb"], m["split_peak_mb"], m["negatives_peak_mb"])
            print(
                f"{n:>11,}{shape['users']:>9,}{shape['items']:>8,}{m['preprocess_s']:>8.1f}"
                f"{m['split_s']:>9.1f}{m['negatives_s']:>7.1f}{peak:>9,.0f}",
                flush=True,
            )
            if args.keep is None:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
