"""Where a training step's time goes: torch.profiler over a few optimizer steps of one model
on the real ML-100K split (`dvc repro` first); prints the top operators by self time on the
device and on the host. Run by hand; gpu_check.sh runs it on CUDA.

    python benchmarks/profile_step.py --model deepfm --device cuda --batch-size 65536 \
        [--steps 5] [--nondeterministic] [--rows 25] [--split DIR] [--threads N] \
        [--train sparse_embeddings=true] [--model-params embed_dim=16 recent_items=0]

--split takes another split folder, e.g. a click log's from benchmarks/ctr_scale.py --keep.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]

from deepfm.config import load_config  # noqa: E402
from deepfm.data.batches import feature_tensors  # noqa: E402
from deepfm.data.rowsplit import CTRSplit  # noqa: E402
from deepfm.data.sampling import RatedIndex  # noqa: E402
from deepfm.data.splitting import read_split  # noqa: E402
from deepfm.models import build_model  # noqa: E402
from deepfm.training.device import setup_torch  # noqa: E402
from deepfm.training.loop import train_steps  # noqa: E402
from deepfm.training.objectives import make_objective  # noqa: E402
from deepfm.training.optim import make_optimizer, use_sparse_gradients  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument(
        "--nondeterministic", action="store_true", help="torch.use_deterministic_algorithms off"
    )
    ap.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    ap.add_argument("--threads", type=int, default=0, help="train.num_threads (0: the cores)")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model-params", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    train_keys = {"device": args.device, "batch_size": args.batch_size, "num_threads": args.threads}
    overrides = [f"train.{k}={v}" for k, v in train_keys.items()] + ["model=" + args.model]
    overrides += [f"train.{item}" for item in args.train]
    overrides += [f"{args.model}.{item}" for item in args.model_params]
    cfg = load_config(ROOT / "params.yaml", overrides)
    tc, params = cfg.train, cfg.model_params
    _, device = setup_torch(tc, cfg.seed)
    if args.nondeterministic:
        torch.use_deterministic_algorithms(False)
    split = read_split(args.split)
    rated = None
    if not isinstance(split, CTRSplit):
        rated = RatedIndex.of_train(split)
    model = build_model(args.model, split.schema, feature_tensors(split), params)
    model = model.to(device).train()
    if tc.sparse_embeddings:
        use_sparse_gradients(model)
    objective = make_objective(cfg, split, rated, device)
    optimizer = make_optimizer(model, tc)
    batches = list(objective.batches(1, tc.batch_size, torch.Generator().manual_seed(0)))
    batches = batches[: args.steps + 2]
    train_steps(model, optimizer, batches[:2], objective, amp=tc.amp)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    train_steps(model, optimizer, batches[2:], objective, amp=tc.amp)
    sync()
    per_step = (time.perf_counter() - start) / max(1, len(batches) - 2)
    column = 2 if isinstance(split, CTRSplit) else 0  # the labels; the users
    rows = sum(len(b[column]) for b in batches[2:]) / max(1, len(batches) - 2)
    print(
        f"{args.model} on {device}: {per_step * 1e3:.1f} ms per step of {rows:.0f} rows "
        f"({rows / per_step:,.0f} rows/s), deterministic={not args.nondeterministic}"
    )
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        train_steps(model, optimizer, batches[2:], objective, amp=tc.amp)
        sync()
    averages = prof.key_averages()
    if device.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
