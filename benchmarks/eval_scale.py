"""Full-ranking evaluation at ML-20M scale: seconds, users/s and peak RSS (run by hand).

Reads a split written by benchmarks/scale.py (`--keep DIR`: DIR/synthetic-N/split), builds
each model from its params.yaml section (untrained weights: time and memory do not depend
on them), and runs the protocol's own evaluation (deepfm.evaluation.ranking.evaluate_split:
every evaluation user scored against the whole catalogue, in blocks of eval.batch_users)
on a seeded sample of n users (eval.sample_users), each (model, n) in a fresh process, with
its wall time and peak RSS (VmHWM). Both held-out sets are scored, as the eval stage does.

    python benchmarks/eval_scale.py --split DIR/synthetic-20000000/split \\
        --models fm deepfm --users 2000 8000

Synthetic data only; the metrics of untrained models mean nothing and are not printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(split_dir: str, model_name: str, n_users: int, threads: int) -> dict:
    import torch

    from deepfm.config import load_config
    from deepfm.data.batches import feature_tensors
    from deepfm.data.sampling import RatedIndex
    from deepfm.data.splitting import read_split
    from deepfm.evaluation.ranking import evaluate_split, user_sample
    from deepfm.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "params.yaml")
    split = read_split(Path(split_dir))
    model = build_model(model_name, split.schema, feature_tensors(split), cfg.models[model_name])
    rated = RatedIndex.of_train(split)
    sample = user_sample(len(split.val.users), n_users, cfg.seed)
    ready_mb = peak_rss_mb()
    t = time.perf_counter()
    evaluate_split(
        model, split, rated, ks=cfg.eval.ks, batch_users=cfg.eval.batch_users, sample=sample
    )
    seconds = time.perf_counter() - t
    users = len(split.val.users) if sample is None else len(sample)
    return {
        "model": model_name,
        "users": users,
        "of": len(split.val.users),
        "items": split.schema.num_items,
        "parameters": model.num_parameters(),
        "seconds": seconds,
        # both held-out sets are scored: 2 x users score rows of the whole catalogue
        "users_per_s": 2 * users / seconds,
        "ready_peak_mb": ready_mb,
        "peak_mb": peak_rss_mb(),
        "batch_users": cfg.eval.batch_users,
        "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, required=True, help="a split folder of scale.py")
    ap.add_argument("--models", nargs="+", default=["fm", "deepfm"])
    ap.add_argument("--users", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_scale.json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':>8}{'users':>8}{'of':>9}{'items':>8}{'s':>9}{'users/s':>9}{'ready MB':>10}"
          f"{'peak MB':>9}")  # fmt: skip
    for model in args.models:
        for n in args.users:
            with mp.get_context("spawn").Pool(1) as pool:  # peak RSS of this run alone
                r = pool.apply(measure, (str(args.split), model, n, args.threads))
            rows.append(r)
            print(
                f"{model:>8}{r['users']:>8,}{r['of']:>9,}{r['items']:>8,}{r['seconds']:>9.1f}"
                f"{r['users_per_s']:>9.1f}{r['ready_peak_mb']:>10,.0f}{r['peak_mb']:>9,.0f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
