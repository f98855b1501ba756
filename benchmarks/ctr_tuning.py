"""CTR tuning on VALIDATION AUC, then seeds on test (run by hand; docs/tuning-log.md, "CTR").

No real click log is available offline, so this tunes on the synthetic Criteo-format file the
tests use (tests/conftest.py make_criteo_file: the click odds follow an XOR of two categories'
signs that only factorised interactions can learn, plus a small main effect). The file, the
80/10/10 split by row order and the encoding are the ctr protocol's (docs/protocol.md).

1. A grid per model over learning rate, embedding size and dense / sparse embedding updates,
   each trial trained for --epochs (batch 256: 16k train rows need the steps) with the
   validation AUC after every epoch; a trial's score is its best validation AUC
   (train.checkpoint: best, so the kept weights are those).
2. The best trial of each model (by validation AUC only) rerun with --seeds; test AUC and
   LogLoss per seed, mean ± std, and the paired bootstrap over test rows of each model against
   the best other one.

    python benchmarks/ctr_tuning.py [--rows 20000] [--epochs 6] [--seeds 1 2 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepfm.config import parse_config  # noqa: E402
from deepfm.data.canonical import canonical_tables, fetch_dataset  # noqa: E402
from deepfm.data.declaration import parse_dataset  # noqa: E402
from deepfm.data.rowsplit import split_ctr  # noqa: E402
from deepfm.evaluation.rows import evaluate_rows  # noqa: E402
from deepfm.models.checkpoint import load_model  # noqa: E402
from deepfm.results.statistics import paired_row_test  # noqa: E402
from deepfm.training.loop import train  # noqa: E402
from tests.conftest import criteo_declaration, make_criteo_file  # noqa: E402

GRID = {
    "learning_rate": [0.002, 0.005],
    "embed_dim": [16, 64],
    "sparse_embeddings": [False, True],
}
MODELS = ("deepfm", "fm", "lr")  # xDeepFM's CIN over 39 fields: too slow for this grid on 2 cores


def config(model: str, seed: int, epochs: int, lr: float, dim: int, sparse: bool):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.update(model=model, seed=seed)
    raw["train"].update(
        epochs=epochs, min_epochs=epochs, val_every=1, monitor="auc", checkpoint="best",
        learning_rate=lr, sparse_embeddings=sparse, batch_size=256, num_threads=2,
    )  # fmt: skip
    for section in ("deepfm", "xdeepfm", "attention_deepfm"):
        raw[section].update(recent_items=0, history_pooling="mean")
    for section in ("deepfm", "xdeepfm", "fm"):
        raw[section]["embed_dim"] = dim
    return parse_config(raw, require_all=True)


def trial(split, folder: Path, model: str, seed: int, epochs: int, lr, dim, sparse) -> dict:
    cfg = config(model, seed, epochs, lr, dim, sparse)
    path = folder / f"{model}-{seed}-{lr}-{dim}-{int(sparse)}.pt"
    start = time.perf_counter()
    out = train(cfg, split, path, progress=False)
    scorer, payload = load_model(path)
    test = evaluate_rows(scorer, split.test)
    return {
        "model": model, "seed": seed, "learning_rate": lr, "embed_dim": dim,
        "sparse_embeddings": sparse, "val_auc": round(payload["val"]["auc"], 5),
        "best_epoch": out.best_epoch, "test_auc": test.metrics["auc"],
        "test_logloss": test.metrics["logloss"], "seconds": round(time.perf_counter() - start, 1),
        "logits": test.logits,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", type=Path, help="JSON lines of every trial")
    args = p.parse_args()
    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="ctr-tuning-"))
    path = make_criteo_file(folder / "train.txt", n_rows=args.rows)
    spec = parse_dataset("synthetic", criteo_declaration(path), ("criteo",))
    interactions, _, _ = canonical_tables(spec, fetch_dataset(spec, folder / "raw"))
    split = split_ctr(interactions, spec.fields, seed=42)
    rows = []
    best = {}
    for model in MODELS:
        # LR has no embedding size: its grid is the learning rate and the update kind
        dims = [1] if model == "lr" else GRID["embed_dim"]
        for lr, dim, sparse in itertools.product(
            GRID["learning_rate"], dims, GRID["sparse_embeddings"]
        ):
            r = trial(split, folder, model, 0, args.epochs, lr, dim, sparse)
            rows.append({k: v for k, v in r.items() if k != "logits"} | {"stage": "grid"})
            print(json.dumps(rows[-1]), flush=True)
            if model not in best or r["val_auc"] > best[model]["val_auc"]:
                best[model] = r
    finals = {}
    for model, chosen in best.items():
        knobs = (chosen["learning_rate"], chosen["embed_dim"], chosen["sparse_embeddings"])
        finals[model] = [trial(split, folder, model, s, args.epochs, *knobs) for s in args.seeds]
        for r in finals[model]:
            rows.append({k: v for k, v in r.items() if k != "logits"} | {"stage": "final"})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| model | chosen (lr, dim, updates) | val AUC (grid) | test AUC | test LogLoss |")
    print("|---|---|--:|--:|--:|")
    order = sorted(finals, key=lambda m: -np.mean([r["test_auc"] for r in finals[m]]))
    for model in order:
        auc = [r["test_auc"] for r in finals[model]]
        loss = [r["test_logloss"] for r in finals[model]]
        c = best[model]
        knobs = f"{c['learning_rate']}, {c['embed_dim']}, "
        knobs += "sparse" if c["sparse_embeddings"] else "dense"
        auc_cell = f"{np.mean(auc):.4f} ± {np.std(auc, ddof=1):.4f}"
        loss_cell = f"{np.mean(loss):.4f} ± {np.std(loss, ddof=1):.4f}"
        print(f"| {model} | {knobs} | {c['val_auc']:.4f} | {auc_cell} | {loss_cell} |")
    labels = split.test.labels.astype(np.int64)
    top = order[0]
    for other in order[1:]:
        t = paired_row_test(
            labels,
            [r["logits"] for r in finals[top]],
            [r["logits"] for r in finals[other]],
            n_resamples=1000,
        )
        print(
            f"{top} - {other}: test AUC {t.value_a - t.value_b:+.4f}, 95% CI "
            f"[{t.ci_low:+.4f}, {t.ci_high:+.4f}] over {t.n_rows:,} rows"
        )
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
