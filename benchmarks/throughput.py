"""Throughput benchmark on real ML-100K: run by hand after `dvc repro`; prints a table, writes JSON.

For each model it measures, medians of --repeats runs:
- bound:     forward + backward + optimizer step on pre-built, pre-shuffled batches (the
             compute-only bound of one epoch);
- epoch:     the real training epoch (negative sampling + shuffling + batching + steps) and
             its ratio to the bound;
- sampling:  negative sampling alone (one epoch's examples);
- eval:      evaluation alone (sampled candidates + full ranking, test split).
Optionally (--repro) the wall time and peak RSS of `dvc repro --force`.

    python benchmarks/throughput.py [--models deepfm xdeepfm] [--repeats 3] [--repro]
        [--device cuda] [--amp] [--train batch_size=65536 device_epochs=true ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from deepfm.config import load_config  # noqa: E402
from deepfm.data.batches import epoch_examples, feature_tensors  # noqa: E402
from deepfm.data.sampling import RatedIndex  # noqa: E402
from deepfm.data.splitting import read_split  # noqa: E402
from deepfm.evaluation.ranking import evaluate_split  # noqa: E402
from deepfm.models import MODELS, build_model  # noqa: E402
from deepfm.training.device import setup_torch  # noqa: E402
from deepfm.training.loop import train_steps  # noqa: E402
from deepfm.training.objectives import make_objective  # noqa: E402
from deepfm.training.optim import make_optimizer  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench_model(name: str, overrides: list[str], split, rated, device, repeats: int) -> dict:
    # the model chosen in params.yaml's terms, so that its section's own `train:` keys apply
    cfg = load_config(ROOT / "params.yaml", [*overrides, f"model={name}"])
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    model = build_model(name, split.schema, feature_tensors(split), cfg.model_params).to(device)
    objective = make_objective(cfg, split, rated, device)
    row: dict = {"model": name, "parameters": model.num_parameters()}

    def examples(epoch=1):
        return epoch_examples(
            split,
            rated,
            seed=cfg.seed,
            epoch=epoch,
            negatives_per_positive=tc.negatives_per_positive,
            targets=tc.targets,
        )

    row["sampling_s"], ex = timed(examples, repeats)
    n = len(ex[0])
    row["samples_per_epoch"] = n

    if model.trainable:
        optimizer = make_optimizer(model, tc)
        prebuilt = list(objective.batches(1, tc.batch_size, torch.Generator().manual_seed(0)))
        model.train()
        step_model = model
        if tc.compile_mode != "none":  # as the training loop does
            step_model = torch.compile(model, mode=tc.compile_mode)
        start = time.perf_counter()
        train_steps(  # warm-up (allocator, kernels, compilation: full and last batch shapes)
            step_model, optimizer, prebuilt[:5] + prebuilt[-1:], objective, amp=tc.amp
        )
        row["warmup_s"] = time.perf_counter() - start
        row["bound_s"], _ = timed(
            lambda: train_steps(step_model, optimizer, prebuilt, objective, amp=tc.amp), repeats
        )

        shuffle = torch.Generator().manual_seed(cfg.seed)

        def real_epoch():
            batches = objective.batches(1, tc.batch_size, shuffle)
            return train_steps(step_model, optimizer, batches, objective, tc.grad_clip, tc.amp)

        row["epoch_s"], _ = timed(real_epoch, repeats)
        row["epoch_over_bound"] = row["epoch_s"] / row["bound_s"]
        row["bound_samples_per_s"] = n / row["bound_s"]
        row["epoch_samples_per_s"] = n / row["epoch_s"]
        row["sampling_share_of_epoch"] = row["sampling_s"] / row["epoch_s"]
    else:
        row["fit_s"], _ = timed(lambda: model.fit(split), repeats)

    model.eval()
    row["eval_s"], _ = timed(
        lambda: evaluate_split(
            model,
            split,
            rated,
            ks=cfg.eval.ks,
            batch_users=cfg.eval.batch_users,
            device=device,
            which=("test",),
        ),
        repeats,
    )
    return row


def bench_repro(repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            ["dvc", "repro", "--force"],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"repro_force_s": statistics.median(times), "repro_peak_rss_mb": peak_kb / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models",
        nargs="+",
        default=[m for m in ("deepfm", "xdeepfm", "attention_deepfm") if m in MODELS],
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repro", action="store_true", help="also time `dvc repro --force`")
    ap.add_argument("--device", default=None, help="override train.device (cpu | cuda)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    ap.add_argument(
        "--train",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override train.* params, e.g. batch_size=65536 lr_scaling=sqrt "
        "device_epochs=true compile_mode=reduce-overhead",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    args = ap.parse_args()

    overrides = [f"train.{item}" for item in args.train]
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.amp:
        overrides.append("train.amp=true")
    cfg = load_config(ROOT / "params.yaml", overrides)
    threads, device = setup_torch(cfg.train, cfg.seed)
    split = read_split(ROOT / "data" / "split")
    rated = RatedIndex.of_train(split)
    env = {
        "torch": torch.__version__,
        "threads": threads,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "batch_size": cfg.train.batch_size,
        "train_overrides": args.train,
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = [bench_model(m, overrides, split, rated, device, args.repeats) for m in args.models]
    header = (
        f"{'model':<18}{'params':>9}{'bound s':>9}{'epoch s':>9}{'ratio':>7}"
        f"{'samples/s':>11}{'sampling':>10}{'share':>7}{'eval s':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['model']:<18}{r['parameters']:>9,}{r.get('bound_s', float('nan')):>9.2f}"
            f"{r.get('epoch_s', float('nan')):>9.2f}{r.get('epoch_over_bound', float('nan')):>7.2f}"
            f"{r.get('epoch_samples_per_s', float('nan')):>11,.0f}{r['sampling_s']:>10.3f}"
            f"{r.get('sampling_share_of_epoch', float('nan')):>7.1%}{r['eval_s']:>8.2f}"
        )
    result = {"environment": env, "models": rows}
    if args.repro:
        result["repro"] = bench_repro(args.repeats)
        print(
            f"dvc repro --force: {result['repro']['repro_force_s']:.1f} s (median), "
            f"peak RSS {result['repro']['repro_peak_rss_mb']:.0f} MB"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
