"""Hyper-parameter search on the VALIDATION split only (run by hand; never looks at test).

Each trial = params.yaml + overrides, trained for `train.epochs` with early stopping turned
off (min_epochs = epochs), scored by validation full-ranking NDCG@10 at the last epoch (what
the pipeline's `checkpoint: last` keeps; a mean over the last validations would mix in
mid-schedule epochs of a short run), with the best epoch's value and the mean of the
validations in the last 10 epochs beside it. Trials run in parallel
processes (size --jobs x --threads to the cores).

    python benchmarks/sweep.py benchmarks/grids/causal/sasrec.yaml [more grids] --seeds 1 \
        --jobs 2 --threads 1 [--device cuda] [--final-seeds 1 2 3 4 5]
    python benchmarks/sweep.py benchmarks/grids/causal/*.yaml --seeds 1 --summary

A grid file is either a YAML list of override mappings (`- {train: {learning_rate: 0.001}}`)
or a declared search with a fixed budget, the same for every model:

    model: sasrec
    trials: 20            # the budget: `include` first, then distinct seeded random draws
    seed: 0               # of the draws (not of training)
    include: [{}]         # e.g. today's defaults ({} = params.yaml as it is)
    space:
      sasrec.dropout: [0.1, 0.2, 0.5]
      split.history_length: [10, 50]
      objective: [{deepfm.loss: bce}, {deepfm.loss: bce_grouped, deepfm.catalogue_weight: 0.5}]

(`objective` is a joint choice: a value that is a mapping sets several keys together.)

Trials train on the existing data/split/ (made with params.yaml's seed), so --seeds vary the
training randomness only; an override of `split` builds that split from data/processed/, and
overrides of what fetch / preprocess read are refused. Each finished trial is appended to
<out-dir>/<grid>.jsonl at once (commit it: a sweep outlives a session only in git), and a rerun
skips the trials already there, so an interrupted sweep resumes. --final-seeds reruns each
grid's chosen trial per seed with val and test metrics (<out-dir>/<grid>.final.jsonl, per-user
ranks in <out-dir>/ranks/).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import multiprocessing as mp
import random
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


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
    """One training run. final=False: a search trial (full curve, validation only).
    final=True: the pipeline's own semantics (early stopping), then val + test evaluation of
    the best checkpoint, exactly as the eval stage computes them."""
    override, seed, device, threads, final, ranks_dir, (commit, base) = args
    import torch

    from deepfm.config import parse_config
    from deepfm.data.sampling import RatedIndex
    from deepfm.evaluation.ranking import evaluate_split
    from deepfm.models.checkpoint import load_model
    from deepfm.training.loop import train

    torch.set_num_threads(threads)
    raw = merge(base, override)
    raw["seed"] = seed
    own = (raw.get(raw["model"]) or {}).get("train")
    if own is not None:  # the model's own train keys replace `train`'s: the trial's win over both
        own.update(override.get("train", {}))
    cfg = parse_config(raw, require_all=True)
    settings = {"device": device, "num_threads": threads}
    if not final:  # a search trial runs its whole schedule
        settings["min_epochs"] = cfg.train.epochs
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **settings))
    split = _split_for(override, base, parse_config)
    curve = Curve()
    start = time.perf_counter()
    ckpt = Path(f"/tmp/sweep-{mp.current_process().pid}.pt")
    out = train(cfg, split, ckpt, live=curve, progress=False)
    seconds = out.seconds_per_epoch
    result = {
        "override": override, "seed": seed, "model": cfg.model, "device": device,
        "threads": threads, "commit": commit,
        "best_epoch": out.best_epoch, "epochs_run": out.epochs_run,
        "parameters": out.num_parameters,
        "seconds_per_epoch": sum(seconds) / max(1, len(seconds)),
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    # validated epochs only (train.val_every); "last 10" = those among the last 10 epochs run
    validated = [(i + 1, r) for i, r in enumerate(curve.rows) if "val/full_ndcg@10" in r]
    if validated:
        epochs = [e for e, _ in validated]
        scores = [r["val/full_ndcg@10"] for _, r in validated]
        hrs = [r["val/hr@10"] for _, r in validated]
        tail = [i for i, e in enumerate(epochs) if e > len(curve.rows) - 10]
        result.update({
            "val_full_ndcg@10_best": max(scores),
            "val_hr@10_at_best": hrs[scores.index(max(scores))],
            "val_full_ndcg@10_final": scores[-1],
            "val_hr@10_final": hrs[-1],
            "val_full_ndcg@10_last10": sum(scores[i] for i in tail) / len(tail),
            "val_hr@10_last10": sum(hrs[i] for i in tail) / len(tail),
            "curve": {e: round(s, 4) for e, s in zip(epochs, scores, strict=True)},
        })  # fmt: skip
    if final:
        import pandas as pd

        model, _ = load_model(ckpt)
        model = model.to(device)
        rated = RatedIndex.of_train(split)
        results = evaluate_split(
            model, split, rated, ks=cfg.eval.ks, batch_users=cfg.eval.batch_users, device=device
        )
        for name, r in results.items():
            result[name] = r.metrics
            if ranks_dir is not None:
                frame = pd.DataFrame({
                    "split": name, "user_id": split.user_ids[r.users],
                    "item_id": split.item_ids[r.items], "sampled_rank": r.sampled_rank,
                    "full_rank": r.full_rank, "num_candidates": r.num_candidates,
                })  # fmt: skip
                frame.to_parquet(Path(ranks_dir) / f"{cfg.model}-seed{seed}-{name}.parquet")
    ckpt.unlink(missing_ok=True)
    return result


_SPLITS: dict = {}


def _commit() -> str:
    """The code the sweep runs: HEAD when it starts, "+dirty" with uncommitted changes under
    src/ or params.yaml (its workers import the code once; a commit made later is not theirs)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = git("status", "--porcelain", "--", "src", "params.yaml").strip()
    return git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")


def _split_for(override: dict, base: dict, parse_config):
    """data/split/, or, for an override of `split`, the split those params make from
    data/processed/ with params.yaml's seed (so the candidates stay those of data/split/ while
    trial seeds vary the training); cached per process."""
    from deepfm.data.splitting import read_split, split_processed

    if "split" not in override:
        return read_split(ROOT / "data" / "split")
    key = _key(override["split"])
    if key not in _SPLITS:
        cfg = parse_config(merge(base, {"split": override["split"]}), require_all=True)
        _SPLITS[key] = split_processed(cfg, ROOT / "data" / "processed")
    return _SPLITS[key]


def check_override(override: dict, grid: Path) -> None:
    """Trials read data/processed/, so an override of what the fetch or preprocess stage reads
    would silently not apply: refuse it."""
    upstream = {"dataset", "data"} & set(override)
    if "num_negatives" in (override.get("eval") or {}):
        upstream.add("eval.num_negatives")
    if upstream:
        raise SystemExit(
            f"{grid}: {override} changes {', '.join(sorted(upstream))}, which the preprocess / "
            "split stages read; a sweep trains on the existing data/processed/ and candidates. "
            "Change params.yaml and run `dvc repro split` first, or compare with "
            "`dvc exp run -S ...`."
        )


def _key(override: dict) -> str:
    return json.dumps(override, sort_keys=True)


def nested(dotted: dict) -> dict:
    """{"train.learning_rate": 0.001} -> {"train": {"learning_rate": 0.001}}."""
    out: dict = {}
    for name, value in dotted.items():
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def expand_grid(grid: Path) -> list[dict]:
    """The grid file's trials as override mappings (see the module docstring)."""
    spec = yaml.safe_load(grid.read_text())
    if isinstance(spec, list):
        return [o or {} for o in spec]
    missing = {"model", "trials", "space"} - set(spec)
    if missing:
        raise SystemExit(f"{grid}: a declared search needs {', '.join(sorted(missing))}")
    space = {name: list(values) for name, values in spec["space"].items()}
    size = 1
    for values in space.values():
        size *= len(values)
    budget = spec["trials"]
    chosen = [nested(o) for o in spec.get("include", [])]
    if budget > size + len(chosen):
        raise SystemExit(f"{grid}: {budget} trials asked for, the space holds {size}")
    rng = random.Random(spec.get("seed", 0))
    seen = {_key(o) for o in chosen}
    while len(chosen) < budget:
        draw = nested(_flat({name: rng.choice(values) for name, values in space.items()}))
        if _key(draw) not in seen:
            seen.add(_key(draw))
            chosen.append(draw)
    return [merge(o, {"model": spec["model"]}) for o in chosen]


def _flat(draw: dict) -> dict:
    """A joint choice (a value that is itself a mapping of dotted names, e.g. a loss with its
    weight) contributes its entries; any other value is the named key's."""
    out: dict = {}
    for name, value in draw.items():
        out.update(value if isinstance(value, dict) else {name: value})
    return out


# ranked by the first: validation full NDCG@10 at the last epoch (checkpoint: last)
SUMMARY_FIELDS = (
    "val_full_ndcg@10_final",
    "val_full_ndcg@10_last10",
    "val_full_ndcg@10_best",
    "val_hr@10_final",
)


def summarize(results: list[dict]) -> list[tuple]:
    """Per override, the means over seeds of SUMMARY_FIELDS, then the override's key."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(_key(r["override"]), []).append(r)
    rows = []
    for key, rs in groups.items():
        fields = SUMMARY_FIELDS
        means = [sum(r[f] for r in rs) / len(rs) for f in fields]
        rows.append((*means, key))
    return sorted(rows, reverse=True)


def read_done(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_summary(grid_name: str, results: list[dict], planned: int) -> dict:
    """Prints the grid's table; returns the chosen override."""
    table = summarize(results)
    print(
        f"\n[{grid_name}] {len(table)} of {planned} trials done; mean over seeds: validation "
        "full-ranking NDCG@10 (last epoch | last 10 epochs | best epoch), HR@10 last epoch"
    )
    for final, last10, best, hr, key in table:
        print(f"  {final:.4f} | {last10:.4f} | {best:.4f}, {hr:.4f}  {key}")
    return json.loads(table[0][-1]) if table else {}


def _report(grid_name: str, r: dict) -> None:
    print(
        f"[{grid_name}] {json.dumps(r['override']):<60} seed {r['seed']}: best "
        f"{r.get('val_full_ndcg@10_best', float('nan')):.4f} @ {r['best_epoch']:>2}"
        f", last {r.get('val_full_ndcg@10_final', float('nan')):.4f} ({r['seconds']} s)",
        flush=True,
    )


def run_finals(pool, chosen: dict, args) -> None:
    ranks_dir = args.out_dir / "ranks"
    ranks_dir.mkdir(exist_ok=True)
    for grid_name, override in chosen.items():
        finals = [
            (override, s, args.device, args.threads, True, str(ranks_dir), args.code)
            for s in args.final_seeds
        ]
        with open(args.out_dir / f"{grid_name}.final.jsonl", "w") as f:
            for r in pool.imap(run_trial, finals):
                f.write(json.dumps(r) + "\n")
                f.flush()
                t = r["test"]
                print(
                    f"[final] {r['model']:<17} seed {r['seed']}: test full_ndcg@10 "
                    f"{t['full_ndcg@10']:.4f} hr@10 {t['hr@10']:.4f} (best epoch "
                    f"{r['best_epoch']}, {r['seconds_per_epoch']:.2f} s/epoch)",
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grids", type=Path, nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--final-seeds",
        type=int,
        nargs="*",
        default=[],
        help="after each grid, rerun its best trial (by validation) with these "
        "seeds, with the pipeline's stopping and checkpoint rules, and evaluate val and test",
    )
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "tuning")
    ap.add_argument("--summary", action="store_true", help="print the tables; train nothing")
    args = ap.parse_args()
    # the code and params the sweep started on: its workers import the code once, and a
    # later edit of params.yaml must not change the trials that record this commit
    args.code = (_commit(), yaml.safe_load((ROOT / "params.yaml").read_text()))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    planned: dict[str, list[tuple[dict, int]]] = {}
    for grid in args.grids:
        overrides = expand_grid(grid)
        for o in overrides:
            check_override(o, grid)
        planned[grid.stem] = [(o, s) for o in overrides for s in args.seeds]
    done = {g: read_done(args.out_dir / f"{g}.jsonl") for g in planned}
    todo, owner = [], []
    for grid_name, trials in planned.items():
        finished = {(_key(r["override"]), r["seed"]) for r in done[grid_name]}
        for o, s in trials:
            if (_key(o), s) not in finished:
                todo.append((o, s, args.device, args.threads, False, None, args.code))
                owner.append(grid_name)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        if not args.summary:
            print(f"{len(todo)} trials to run ({sum(map(len, done.values()))} done before)")
            for grid_name, r in zip(owner, pool.imap(run_trial, todo), strict=True):
                done[grid_name].append(r)
                with open(args.out_dir / f"{grid_name}.jsonl", "a") as f:
                    f.write(json.dumps({"grid": grid_name, **r}) + "\n")
                _report(grid_name, r)
        planned_keys = {g: {_key(o) for o, _ in t} for g, t in planned.items()}
        chosen = {
            g: print_summary(
                g, [r for r in rs if _key(r["override"]) in planned_keys[g]], len(planned_keys[g])
            )
            for g, rs in done.items()
        }
        if args.final_seeds and not args.summary:
            run_finals(pool, chosen, args)
    print(f"chosen by validation: {json.dumps(chosen)}")


if __name__ == "__main__":
    main()
