"""Cost curve of the data stages at ML-20M scale, on synthetic data (run by hand).

Generates a synthetic interaction table in MovieLens-100K's file format (u.data / u.user /
u.item) at each requested size, with ML-20M-like shape (users and items grow with the number
of ratings; long-tailed item popularity and user activity), then measures, each size in a
fresh process:
- preprocess: parsing + validation into the canonical tables (deepfm.data.movielens);
- split: leave-one-out + 999 fixed candidates per evaluation user + encoders;
- negatives: one epoch of negative sampling (4 per train positive);
with wall time and peak RSS (VmHWM) after each step.

    python benchmarks/scale.py --ratings 1000000 10000000 20000000 32000000 [--keep DIR [--reuse]]

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
TABLES = ("interactions", "users", "items")


# (ratings, users, items) of real MovieLens releases: ML-1M, ML-20M, ML-32M
ANCHORS = ((1_000_000, 6_040, 3_706), (20_000_000, 138_493, 26_744), (32_000_000, 200_948, 87_585))


def shape_for(n_ratings: int) -> tuple[int, int]:
    """Users and items for a table of n ratings, interpolating (or extrapolating from) the
    nearest two ANCHORS on a log scale: ML-1M and ML-20M up to 20M ratings, ML-20M and ML-32M
    above."""
    (n0, u0, i0), (n1, u1, i1) = ANCHORS[:2] if n_ratings <= ANCHORS[1][0] else ANCHORS[1:]
    f = np.log(n_ratings / n0) / np.log(n1 / n0)
    users = round(np.exp(np.log(u0) + f * (np.log(u1) - np.log(u0))))
    items = round(np.exp(np.log(i0) + f * (np.log(i1) - np.log(i0))))
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
    shape = {
        "users": n_users,
        "items": n_items,
        "ratings": len(keys),
        "bytes": (folder / "u.data").stat().st_size,
    }
    (folder / "shape.json").write_text(json.dumps(shape) + "\n")
    return shape


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def preprocess_step(folder: str, out: str) -> dict:
    """What the preprocess stage does: parse and validate, write the canonical parquet."""
    from deepfm.data.movielens import load_canonical
    from deepfm.io import write_parquet

    t = time.perf_counter()
    interactions, users, items = load_canonical("ml-100k", Path(folder), 4, 1980)
    for name, table in zip(TABLES, (interactions, users, items), strict=True):
        write_parquet(Path(out) / f"{name}.parquet", table)
    return {"preprocess_s": time.perf_counter() - t, "preprocess_peak_mb": peak_rss_mb()}


def split_step(processed: str, out: str, seed: int) -> dict:
    """What the split stage does: read the canonical parquet, split, write the split as it
    is made (split_processed with an out_dir)."""
    import yaml

    from deepfm.config import parse_config
    from deepfm.data.splitting import split_processed

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = parse_config(
        {
            "seed": seed,
            "split": {"min_positives": 3, "history_length": 10},
            "eval": {"num_negatives": 999},
            "datasets": {"ml-100k": params["datasets"]["ml-100k"]},
        }
    )
    t = time.perf_counter()
    result = split_processed(cfg, Path(processed), Path(out))
    return {
        "split_s": time.perf_counter() - t,
        "split_peak_mb": peak_rss_mb(),
        "eval_users": len(result.test.users),
    }


def negatives_step(split_dir: str, seed: int) -> dict:
    """One epoch of training negatives (4 per train positive) on the written split."""
    from deepfm.data.batches import epoch_examples
    from deepfm.data.sampling import RatedIndex
    from deepfm.data.splitting import read_split

    split = read_split(Path(split_dir))
    t = time.perf_counter()
    rated = RatedIndex.of_train(split)
    ex = epoch_examples(split, rated, seed=seed, epoch=1, negatives_per_positive=4)
    return {
        "negatives_s": time.perf_counter() - t,
        "negatives_peak_mb": peak_rss_mb(),
        "examples_per_epoch": len(ex[0]),
    }


def in_fresh_process(fn, *args) -> dict:
    """fn(*args) in a new interpreter: its peak RSS belongs to that step alone, as each
    stage of the pipeline runs in its own process."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratings", type=int, nargs="+", default=[1_000_000, 10_000_000, 20_000_000])
    ap.add_argument("--keep", type=Path, default=None, help="keep the synthetic files here")
    ap.add_argument(
        "--reuse", action="store_true", help="measure --keep's files of an earlier run as they are"
    )
    ap.add_argument("--generate-only", action="store_true", help="write the files, measure nothing")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="deepfm-scale-"))
    rows = []
    print(
        f"{'ratings':>11}{'users':>9}{'items':>8}{'prep s':>8}{'MB':>8}{'split s':>8}{'MB':>8}"
        f"{'neg s':>7}{'MB':>8}"
    )
    try:
        for n in args.ratings:
            folder = base / f"synthetic-{n}"
            if args.reuse and (folder / "shape.json").is_file():
                shape = json.loads((folder / "shape.json").read_text())
            else:
                shape = generate(folder, n)
            if args.generate_only:
                print(f"{n:>11,}{shape['users']:>9,}{shape['items']:>8,}  written", flush=True)
                continue
            processed, split = folder / "processed", folder / "split"
            m = in_fresh_process(preprocess_step, str(folder), str(processed))
            m |= in_fresh_process(split_step, str(processed), str(split), 42)
            m |= in_fresh_process(negatives_step, str(split), 42)
            rows.append({**shape, **m})
            print(
                f"{n:>11,}{shape['users']:>9,}{shape['items']:>8,}"
                f"{m['preprocess_s']:>8.1f}{m['preprocess_peak_mb']:>8,.0f}"
                f"{m['split_s']:>8.1f}{m['split_peak_mb']:>8,.0f}"
                f"{m['negatives_s']:>7.1f}{m['negatives_peak_mb']:>8,.0f}",
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
