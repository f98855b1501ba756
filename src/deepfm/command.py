"""The `deepfm` command (also `python -m deepfm`): use a trained model. Run it from the
repository root after `make repro`; paths default to the ones dvc.yaml names.

    deepfm recommend --user 42 -k 10      a user's top 10: titles and scores, rated items excluded
    deepfm score pairs.csv [--out F]      a probability per row (user_id,item_id; ctr: the fields)
    deepfm evaluate --checkpoint PATH     the protocol's metrics for any checkpoint
    deepfm info                           the model card: model, params, data, metrics, environment

Argument parsing and printing only: the work is done by deepfm.serving and
deepfm.evaluation.protocol (the eval stage's own function).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deepfm import __version__


def _paths() -> dict[str, str]:
    from deepfm.results.runs import pipeline_paths

    return pipeline_paths()


def _default(args: argparse.Namespace, name: str, key: str) -> Path:
    """An option's value, or the pipeline's path for it (dvc.yaml `vars: paths`)."""
    value = getattr(args, name)
    return Path(value) if value is not None else Path(_paths()[key])


def _pipeline_split() -> Path | None:
    try:
        return Path(_paths()["split"])
    except (OSError, ValueError, KeyError):  # not in the repository: paths were given
        return None


def cmd_recommend(args: argparse.Namespace) -> None:
    from deepfm import serving

    served = serving.load(_default(args, "checkpoint", "model"), _default(args, "split", "split"))
    titles = None
    if not served.is_ctr:
        processed = _default(args, "processed", "processed")
        titles = serving.item_titles(processed, served.split.item_ids)
    top = serving.recommend(served, args.user, args.k, titles)
    if args.format == "csv":
        top.to_csv(sys.stdout, index=False)
        return
    excluded = len(serving.rated_items(served.split, serving.user_index(served, args.user)))
    print(
        f"top {len(top)} for user {args.user} by {served.payload['model']} "
        f"(epoch {served.payload['epoch']}; the {excluded} items they rated excluded)"
    )
    width = max([len(str(i)) for i in top["item_id"]] + [len("item_id")])
    title = "title" if titles is not None else ""
    print(f"{'rank':>4}  {'item_id':>{width}}  {'score':>6}  {title}".rstrip())
    for row in top.itertuples(index=False):
        title = getattr(row, "title", "")
        print(f"{row.rank:>4}  {row.item_id!s:>{width}}  {row.score:.4f}  {title}".rstrip())


def _read_rows(path: str):
    import pandas as pd

    from deepfm.serving import ServingError

    if path != "-" and not Path(path).is_file():
        raise ServingError(f"{path} not found: pass a CSV file with a header line, or - (stdin).")
    try:
        if path.endswith(".parquet"):
            return pd.read_parquet(path)
        sep = "\t" if path.endswith((".tsv", ".tab")) else ","
        return pd.read_csv(sys.stdin if path == "-" else path, sep=sep, dtype=str,
                           keep_default_na=False)  # fmt: skip
    except (ValueError, OSError) as e:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ServingError(f"cannot read {path}: {e}") from None


def cmd_score(args: argparse.Namespace) -> None:
    from deepfm import serving
    from deepfm.io import atomic_path

    served = serving.load(_default(args, "checkpoint", "model"), _default(args, "split", "split"))
    name = "stdin" if args.file == "-" else args.file
    scored = serving.score_rows(served, _read_rows(args.file), name)
    if args.out:
        with atomic_path(args.out) as tmp:
            scored.to_csv(tmp, index=False)
        print(f"scored {len(scored)} rows -> {args.out}", file=sys.stderr)
    else:
        scored.to_csv(sys.stdout, index=False)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from deepfm.config import load_config
    from deepfm.evaluation.protocol import evaluate_as_configured
    from deepfm.io import write_json, write_parquet
    from deepfm.serving import checkpoint_not_found, read_split_dir

    cfg = load_config(args.params)
    checkpoint = _default(args, "checkpoint", "model")
    split_dir = _default(args, "split", "split")
    if not checkpoint.is_file():
        raise checkpoint_not_found(checkpoint)
    # the eval stage's call: the same numbers for the same checkpoint
    result = evaluate_as_configured(cfg, read_split_dir(split_dir), checkpoint, split_dir)
    m = result.metrics
    print(f"{checkpoint}: {m['model']}, epoch {m['checkpoint_epoch']}, on {split_dir}")
    keys = list(m["test"])
    width = max(len(k) for k in keys)
    print(f"{'metric':<{width}}  {'val':>10}  {'test':>10}")
    for key in keys:
        print(f"{key:<{width}}  {m['val'][key]!s:>10}  {m['test'][key]!s:>10}")
    if args.out:
        write_json(args.out, m)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.ranks:
        write_parquet(args.ranks, result.ranks)
        print(f"wrote {args.ranks}", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> None:
    from deepfm.serving import model_card

    split_dir = _default(args, "split", "split")
    card = model_card(
        _default(args, "checkpoint", "model"),
        split_dir=split_dir,
        metrics=_default(args, "metrics", "metrics"),
        # dvc.lock records the pipeline's split: said only when that is the one in use
        lock=Path("dvc.lock") if split_dir == _pipeline_split() else None,
    )
    print(json.dumps(card, indent=2) if args.json else render_card(card))


CARD_METRICS = ("full_ndcg@10", "full_hr@10", "ndcg@10", "hr@10", "auc", "logloss")


def render_card(card: dict) -> str:
    """The model card as text, one fact per line."""
    data = card["data"]
    params = ", ".join(f"{k}={v}" for k, v in card["model_params"].items()) or "none"
    fields = ", ".join(f"{k} ({v})" if v else k for k, v in data["fields"].items())
    lines = [
        f"checkpoint   {card['checkpoint']}",
        f"model        {card['model']}, {card['parameters']:,} parameters, epoch "
        f"{card['epoch']}, seed {card['seed']}",
        f"params       {params}",
        f"dataset      {data['dataset'] or 'not recorded'}: {data['users']:,} users x "
        f"{data['items']:,} items",
        f"fields       {fields} (vocabulary sizes)",
        f"data hash    {data['fingerprint'] or 'not recorded (a checkpoint from before it was)'}"
        " (sha256 of the training data: deepfm.models.checkpoint.data_fingerprint)",
    ]
    split = data.get("split")
    if split is not None:
        verdict = "matches this checkpoint" if split["matches"] else f"NO MATCH: {split['why']}"
        lines.append(f"split        {split['path']}: {verdict}")
    if data.get("dvc_lock_split_md5"):
        lines.append(f"dvc.lock     the split stage's output md5 {data['dvc_lock_split_md5']}")
    metrics = card.get("metrics")
    if metrics is None:
        lines.append("metrics      none found (the eval stage writes them: dvc repro)")
    else:
        whose = (
            "of this checkpoint"
            if metrics["of_this_checkpoint"]
            else "of ANOTHER checkpoint (deepfm evaluate --checkpoint gives this one's)"
        )
        test = metrics["test"]
        shown = "  ".join(f"{k} {test[k]:.4f}" for k in CARD_METRICS if k in test)
        lines.append(f"metrics      {metrics['path']} ({whose}), test: {shown}")
        env = metrics.get("environment")
        if env:
            lines.append(f"evaluated on {_env(env)}")
    lines.append(f"environment  {_env(card['environment'])} (this machine, now)")
    return "\n".join(lines)


def _env(env: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in env.items())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"deepfm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument(
        "--checkpoint", metavar="PATH", help="a checkpoint (default: dvc.yaml's, models/model.pt)"
    )
    model.add_argument(
        "--split", metavar="DIR", help="the split it was trained on (default: data/split)"
    )

    r = sub.add_parser(
        "recommend", parents=[model], help="a user's top-K items with titles and scores"
    )
    r.add_argument("--user", required=True, help="the user's id in the dataset")
    r.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    r.add_argument(
        "--processed", metavar="DIR", help="canonical tables, for titles (default: data/processed)"
    )
    r.add_argument("--format", choices=("table", "csv"), default="table")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser(
        "score",
        parents=[model],
        help="a probability per row of a CSV file",
        description="Top-K datasets: columns user_id,item_id (raw ids; a context field's column "
        "optional). ctr datasets: one column per field. Writes the rows with `probability` "
        "(sigmoid of the logit) and `logit` as CSV.",
    )
    s.add_argument("file", help="CSV with a header (.tsv: tab-separated; .parquet; - = stdin)")
    s.add_argument("--out", metavar="FILE", help="write the CSV here (atomically), not stdout")
    s.set_defaults(func=cmd_score)

    e = sub.add_parser(
        "evaluate",
        parents=[model],
        help="the protocol's metrics for a checkpoint",
        description="The eval stage's metrics (its own function, params.yaml's eval.ks, "
        "eval.batch_users and train.num_threads) for any checkpoint.",
    )
    e.add_argument("--params", default="params.yaml", metavar="FILE")
    e.add_argument(
        "--out", metavar="FILE", help="also write the metrics as JSON (eval.json's form)"
    )
    e.add_argument("--ranks", metavar="FILE", help="also write the per-user ranks (parquet)")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("info", parents=[model], help="the model card")
    i.add_argument("--metrics", metavar="FILE", help="default: metrics/eval.json")
    i.add_argument("--json", action="store_true", help="print the card as JSON")
    i.set_defaults(func=cmd_info)
    # listed for `deepfm -h`; main() hands `deepfm report ...` to deepfm.results.cli
    report = "results over DVC experiments or run records: table | compare | figures | export"
    sub.add_parser("report", help=f"{report} (report -h)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:  # its own parser: deepfm.results.cli
        from deepfm.results.cli import main as report

        return report(argv[1:])
    args = parser().parse_args(argv)
    from deepfm.config import ConfigError
    from deepfm.models.checkpoint import CheckpointError
    from deepfm.serving import ServingError

    try:
        args.func(args)
    except (ServingError, CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1  # a runtime failure; argparse exits 2 for a usage error
    except BrokenPipeError:  # `deepfm score big.csv | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        return 130
    return 0
