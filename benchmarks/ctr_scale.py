"""The ctr protocol at click-log scale, on a synthetic Criteo-format file (run by hand).

Writes a file in the Criteo Kaggle `train.txt` format (label, 13 counts, 26 hashed
categories with Criteo-like cardinalities, empty fields) with `--rows` rows, then runs, each in
a fresh process so peak RSS (VmHWM) is the step's own:
- preprocess: the streamed parse into the canonical parquet (deepfm.data.clicklogs);
- split: the streamed 80/10/10 split by row order, vocabularies on train rows (min_count
  10), codes written to memory-mapped .npy files (deepfm.data.splitting.split_ctr_stream);
- epoch: DeepFM (the params.yaml section, order-aware options off) trained on the mapped
  train codes for `--train-seconds` per `--train` setting (embedding updates dense or sparse,
  i.e. train.sparse_embeddings, and the embedding size), reporting samples/s, then the
  batching alone (gathering shuffled rows from the mapped file) for a quarter of that.

    python benchmarks/ctr_scale.py --rows 2000000 [--keep DIR] [--train-seconds 60]
        [--train dense:64 sparse:64 sparse:16 sparse:16:8192] [--reuse]  # --reuse: DIR's files
        [--threads 2]

The issue's target is 45,840,617 rows (Criteo's train.txt): preprocess + split in < 10 min
with peak RSS < 4 GB on 2 cores, and an epoch at no fewer samples/s than ML-100K's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# distinct values per categorical column, roughly Criteo's (C3 and C12 reach millions there;
# capped here so the generator stays quick)
CARDINALITY = [1460, 583, 200_000, 100_000, 305, 24, 12_517, 633, 3, 93_145, 5683, 200_000,
               3194, 27, 14_992, 200_000, 10, 5652, 2173, 4, 200_000, 18, 15, 100_000, 105,
               100_000]  # fmt: skip


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_criteo(path: Path, rows: int, seed: int = 0, chunk: int = 500_000) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    # every column's values as 8 hex digits, as Criteo hashes them
    hexes = [
        pa.array([f"{c * 2654435761 % 2**32:08x}" for c in range(card + 1)]) for card in CARDINALITY
    ]
    names = ["label"] + [f"I{i + 1}" for i in range(13)] + [f"C{i + 1}" for i in range(26)]
    # nulls are written as empty fields, Criteo's missing values; nothing needs quotes
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as out:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            cols = [pa.array((rng.random(n) < 0.25).astype(np.int8))]
            for _ in range(13):
                counts = rng.zipf(1.6, n).astype(np.int64) - 1
                cols.append(pa.array(counts, mask=rng.random(n) < 0.2))
            for i, card in enumerate(CARDINALITY):
                codes = np.minimum(rng.zipf(1.3, n), card)
                cols.append(pc.take(hexes[i], pa.array(codes, mask=rng.random(n) < 0.05)))
            pacsv.write_csv(pa.table(cols, names=names), out, options)


def step(name: str, args: tuple, queue) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("CTR_SCALE_THREADS", "2")))  # main's --threads
    from deepfm.config import load_config

    cfg = load_config(ROOT / "params.yaml")
    spec = cfg.datasets["criteo"]
    folder = Path(args[0])
    t = time.perf_counter()
    if name == "preprocess":
        from deepfm.data.clicklogs import stream_click_log

        rows = stream_click_log("criteo", folder / "train.txt", folder / "rows.parquet")
        out = {"rows": rows}
    elif name == "split":
        from deepfm.data.rowsplit import split_ctr_stream

        out = split_ctr_stream(folder / "rows.parquet", spec.fields, folder / "split", seed=42)
        out = {"rows": out["rows"], "vocab_total": sum(out["vocab_sizes"].values())}
    else:
        import dataclasses

        from deepfm.data.batches import feature_tensors
        from deepfm.data.splitting import read_split
        from deepfm.models import build_model
        from deepfm.training.loop import train_steps
        from deepfm.training.objectives import GivenLabels
        from deepfm.training.optim import make_optimizer, use_sparse_gradients

        split = read_split(folder / "split")
        updates, dim, *batch = args[2].split(":")
        batch_size = int(batch[0]) if batch else cfg.train.batch_size
        params = dataclasses.replace(  # a click log has no history field
            cfg.models["deepfm"],
            recent_items=0,
            history_pooling="mean",
            embed_dim=int(dim),
        )
        tc = dataclasses.replace(cfg.train, sparse_embeddings=updates == "sparse")
        model = build_model("deepfm", split.schema, feature_tensors(split), params)
        if tc.sparse_embeddings:
            use_sparse_gradients(model)
        optimizer = make_optimizer(model, tc)
        objective = GivenLabels(split, "cpu")
        shuffle = torch.Generator().manual_seed(0)
        seen, limit = 0, float(args[1])
        setup_seconds = time.perf_counter() - t
        steps = objective.batches(1, batch_size, shuffle)
        # warm-up (allocator, first touches of the tables and the map), not timed
        train_steps(model, optimizer, [next(steps) for _ in range(5)], objective)
        start = time.perf_counter()

        def batches():
            nonlocal seen
            for batch in steps:
                if time.perf_counter() - start > limit:
                    return
                seen += len(batch[2])
                yield batch

        train_steps(model, optimizer, batches(), objective)
        out = {
            "train": args[2],
            "batch_size": batch_size,
            "parameters": model.num_parameters(),
            "setup_seconds": round(setup_seconds, 1),
            "samples": seen,
            "samples_per_s": round(seen / (time.perf_counter() - start)),
        }
        # the batching alone (gathers from the mapped codes), to show it is not the limit
        start, gathered = time.perf_counter(), 0
        for batch in objective.batches(2, batch_size, shuffle):
            gathered += len(batch[2])
            if time.perf_counter() - start > limit / 4:
                break
        out["batching_samples_per_s"] = round(gathered / (time.perf_counter() - start))
    out.update(seconds=round(time.perf_counter() - t, 1), peak_rss_mb=round(peak_rss_mb()))
    queue.put(out)


def run(name: str, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=step, args=(name, args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--keep", type=Path, help="folder to keep the files in (default: temporary)")
    p.add_argument(
        "--train",
        nargs="*",
        default=["dense:64", "sparse:64", "sparse:16"],
        help="UPDATES:DIM[:BATCH] settings to train: dense or sparse embedding updates, "
        "embed_dim, batch size (default train.batch_size)",
    )
    p.add_argument("--reuse", action="store_true", help="train on --keep's split only")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each step")
    args = p.parse_args()
    os.environ["CTR_SCALE_THREADS"] = str(args.threads)  # the spawned steps read it
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ctr-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        t = time.perf_counter()
        write_criteo(folder / "train.txt", args.rows)
        size = (folder / "train.txt").stat().st_size
        print(f"wrote {args.rows:,} rows, {size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s")
        results = {}
        for name in ("preprocess", "split"):
            results[name] = run(name, str(folder))
            print(name, json.dumps(results[name]), flush=True)
        total = results["preprocess"]["seconds"] + results["split"]["seconds"]
        print(f"preprocess + split: {total:.0f} s for {args.rows:,} rows", flush=True)
    for setting in args.train:
        result = run("epoch", str(folder), args.train_seconds, setting)
        print("epoch", json.dumps(result), flush=True)
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
