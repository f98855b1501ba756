"""Results over DVC experiments (run from the repository root, venv active).

    deepfm report table [--out FILE.md] [--metrics M ...] [--from-json FILE]
    deepfm report compare MODEL_A MODEL_B [--metric full_ndcg@10]
    deepfm report compare --ranks-a A.parquet [...] --ranks-b B.parquet [...]
    deepfm report figures [--out reports/figures] [--from-json FILE]
    deepfm report export [results/runs]            (then table | compare | figures --records DIR)

`table` reads `dvc exp show --json` (the experiments of HEAD; --rev for another baseline commit,
repeatable, --all-commits for every commit),
keeps the finished experiments, one per (model, seed) (the newest), and prints mean ± std over
seeds per model. `compare` pairs two models user by user on the test split: each model's
metrics/eval_ranks.parquet is read at every one of its experiments (dvc.api.open), averaged per
user over its seeds, then the mean difference, a bootstrap CI and a Wilcoxon p-value are printed.
`figures` draws PNGs (deepfm.results.figures) from the same runs, with each run's curves and
ranks read the same way; with no finished experiment, from the workspace run alone.
`export` writes the runs `table` would take as run records to commit (deepfm.results.records):
each run's row, rank table and curves; `--records DIR` makes table, compare and figures read
those instead of DVC, so they regenerate offline on a fresh clone.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from deepfm.evaluation.metrics import row_keys
from deepfm.io import atomic_path
from deepfm.results import ReportError
from deepfm.results.headline import SEEDS, TIE_BREAKS, _dvc
from deepfm.results.records import CurvesReader, RanksReader, read_records, write_records
from deepfm.results.rendering import render_markdown
from deepfm.results.runs import Selection, parse_exp_show, pipeline_paths, select_runs
from deepfm.results.statistics import (
    _SAME_DATA_HINT,
    DEFAULT_METRICS,
    MAIN_METRIC,
    holm,
    paired_row_test,
    paired_test,
    paired_user_scores,
    parse_rank_metric,
    per_user_metrics,
    row_tables,
    summarize,
)

RECORDS = Path("results/runs")  # where `export` writes by default: committed with the results
QUEUE_HINT = (
    "run a sweep first, e.g. `dvc exp run --queue -S model=deepfm,itempop -S seed=1,2,3,4,5` "
    "then `dvc queue start`"
)


def exp_show_json(from_json: str | None, all_commits: bool, revs: list[str] | None = None) -> list:
    if from_json:
        try:
            return json.loads(Path(from_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(
                f"cannot read {from_json} as `dvc exp show --json` output: {e}"
            ) from e
    args = ["exp", "show", "--json", *(["-A"] * all_commits)]
    for rev in revs or []:  # experiments of several baseline commits, e.g. before a merge
        args += ["--rev", rev]
    try:
        return json.loads(_dvc(args))
    except json.JSONDecodeError as e:
        raise ReportError(f"`dvc exp show --json` printed something that is not JSON: {e}") from e


def parse_where(items: list[str]) -> dict[str, str]:
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--where {item!r}: write PARAM=VALUE, e.g. split.tie_break=random")
        where[key] = value
    return where


class Source(NamedTuple):
    rows: pd.DataFrame  # every run listed, the columns of `parse_exp_show`
    read_ranks: RanksReader
    read_curves: CurvesReader


def read_source(args: argparse.Namespace) -> Source:
    """The committed run records of --records, else `dvc exp show` with each run's files
    read by dvc.api at its rev."""
    if args.records:
        return Source(*read_records(args.records))
    rows = parse_exp_show(exp_show_json(args.from_json, args.all_commits, args.rev))
    return Source(rows, read_ranks_at, read_curves_at)


def _select(args: argparse.Namespace) -> tuple[Source, Selection, dict[str, str]]:
    """(every run of the source and its readers, the runs that count, the --where filter);
    prints the selection's notes. With no finished experiment of HEAD (a fresh clone) and
    no source named, the committed run records in RECORDS are read instead."""
    source = read_source(args)
    where = parse_where(args.where)
    kinds = dict(include_baselines=args.include_baselines, include_workspace=args.include_workspace)
    selection = select_runs(source.rows, **kinds, where=where)
    named = args.records or args.from_json or args.rev or args.all_commits
    if selection.runs.empty and not named and args.command != "export" and RECORDS.is_dir():
        print(
            f"no finished DVC experiment based on HEAD: reading the committed run records in "
            f"{RECORDS}/ (--records DIR names others)",
            file=sys.stderr,
        )
        args.records = str(RECORDS)
        source = read_source(args)
        selection = select_runs(source.rows, **kinds, where=where)
    for note in selection.notes:
        print(note, file=sys.stderr)
    return source, selection, where


def load_runs(args: argparse.Namespace) -> tuple[pd.DataFrame, Source]:
    """(the runs that count, one per (model, seed), and where they came from)."""
    source, selection, _ = _select(args)
    if selection.runs.empty and args.records:
        raise ReportError(
            f"no run of the records in {args.records} is selected: see the notes above, "
            "--where, --include-baselines and --include-workspace"
        )
    if selection.runs.empty:
        where = (
            "in the repository"
            if args.all_commits
            else f"based on {', '.join(args.rev or ['HEAD'])} (--all-commits also looks at "
            "earlier commits)"
        )
        raise ReportError(f"no finished experiments found {where}; {QUEUE_HINT}")
    return selection.runs, source


def cmd_table(args: argparse.Namespace) -> None:
    runs, _ = load_runs(args)
    metrics = args.metrics
    if list(metrics) == list(DEFAULT_METRICS) and f"{args.split}.{MAIN_METRIC}" not in runs:
        # runs of the ctr protocol: no ranking metrics; group AUC where the data has groups
        metrics = [k for k in row_keys() if f"{args.split}.{k}" in runs]
    text = render_markdown(summarize(runs, metrics, split=args.split))
    print(text, end="")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)


def read_ranks_at(rev: str, name: str) -> pd.DataFrame:
    import dvc.api

    ranks = pipeline_paths()["ranks"]
    try:
        if rev == "workspace":
            return pd.read_parquet(ranks)
        with dvc.api.open(ranks, rev=rev, mode="rb") as f:
            return pd.read_parquet(io.BytesIO(f.read()))
    except Exception as e:  # dvc raises many types here (missing cache, unknown rev, ...)
        raise ReportError(
            f"cannot read {ranks} of experiment {name} ({rev[:7]}): {type(e).__name__}: {e}; "
            f"it is a DVC-cached output: fetch it with `dvc exp pull <remote> {name}`, or rerun "
            "the experiment"
        ) from e


def read_curves_at(rev: str) -> dict[str, pd.Series]:
    """The dvclive curves of a run ("val/<metric>" and "train/loss" -> values by step) for
    the metrics the figures draw; a curve the run did not log is absent."""
    from deepfm.results.figures import CURVE_METRICS, LOSS

    curves_dir = f"{pipeline_paths()['curves']}/plots/metrics"
    keys = [f"val/{m}" for m in CURVE_METRICS] + [LOSS]
    opener = open
    if rev != "workspace":
        from dvc.api import DVCFileSystem

        opener = DVCFileSystem(".", rev=rev).open
    out = {}
    for key in keys:
        path = f"{curves_dir}/{key}.tsv"
        try:
            with opener(path, "r", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        table = pd.read_csv(io.StringIO(text), sep="\t")
        column = key.rsplit("/", 1)[1]
        if {"step", column} - set(table.columns):
            raise ReportError(f"{path} at {rev[:7]}: expected columns step and {column}")
        out[key] = table.set_index("step")[column]
    return out


def read_ranks_file(path: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read rank file {path}: {e}") from e


def compare_rows(args, tables_a, tables_b, label_a, label_b, sources) -> None:
    """The ctr protocol's comparison: a paired bootstrap over impressions of AUC / LogLoss."""
    metric = "auc" if args.metric == MAIN_METRIC else args.metric
    labels, a, groups = row_tables(tables_a, args.split, label_a)
    labels_b, b, _ = row_tables(tables_b, args.split, label_b)
    if not np.array_equal(labels, labels_b):
        raise ReportError(f"{label_a} and {label_b} were scored on other rows: {_SAME_DATA_HINT}")
    resamples = min(args.resamples, 1000)
    r = paired_row_test(
        labels, a, b, metric=metric, groups=groups, n_resamples=resamples, seed=args.seed
    )
    pct = round(100 * r.confidence)
    verdict = "significant: the CI excludes 0" if r.significant else "not significant"
    print(
        f"{metric} on {args.split}, {r.n_rows:,} {r.unit} (ctr protocol), mean over each "
        "model's runs\n"
        f"  {label_a}: {r.value_a:.4f}  ({sources[label_a]})\n"
        f"  {label_b}: {r.value_b:.4f}  ({sources[label_b]})\n"
        f"  difference {label_a} - {label_b}: {r.value_a - r.value_b:+.4f}, {pct}% paired "
        f"bootstrap CI [{r.ci_low:+.4f}, {r.ci_high:+.4f}] ({r.n_resamples:,} resamples of "
        f"{r.unit})\n"
        f"  -> {verdict}"
    )


def cmd_compare(args: argparse.Namespace) -> None:
    if args.metric not in row_keys():
        parse_rank_metric(args.metric)  # fail before reading anything
    if bool(args.ranks_a) != bool(args.ranks_b):
        raise ReportError("give both --ranks-a and --ranks-b, or neither (then two models)")
    if args.ranks_a:
        if len(args.models) not in (0, 2):
            raise ReportError("with --ranks-a/--ranks-b, give two labels or none")
        labels = args.models or ["A", "B"]
        tables = {labels[0]: [read_ranks_file(p) for p in args.ranks_a],
                  labels[1]: [read_ranks_file(p) for p in args.ranks_b]}  # fmt: skip
        sources = {label: f"{len(t)} file(s)" for label, t in tables.items()}
    else:
        labels = args.models
        tables, sources = _model_tables(args, labels)
    label_a, others = labels[0], labels[1:]
    if all("logit" in t.columns for group in tables.values() for t in group):  # ctr rows
        if len(others) > 1:
            raise ReportError("the ctr protocol's compare takes two models")
        compare_rows(args, tables[label_a], tables[others[0]], label_a, others[0], sources)
        return
    parse_rank_metric(args.metric)
    results = {}
    for label_b in others:
        _, a, b = paired_user_scores(
            tables[label_a], tables[label_b], metric=args.metric, split=args.split,
            label_a=label_a, label_b=label_b,
        )  # fmt: skip
        # m comparisons: each CI at 1 - 0.05 / m (Bonferroni, simultaneous), p by Holm below
        confidence = 1 - 0.05 / len(others)
        results[label_b] = paired_test(
            a, b, n_resamples=args.resamples, seed=args.seed, confidence=confidence
        )
    adjusted = dict(zip(others, holm([r.p_value for r in results.values()]), strict=True))
    for label_b, r in results.items():
        print(_comparison_text(args, r, label_a, label_b, sources, adjusted[label_b], len(others)))


def _model_tables(args, labels: list[str]) -> tuple[dict, dict]:
    """Each model's rank tables (one per run) and a note of its runs, for `compare A B ...`."""
    if len(labels) < 2:
        raise ReportError("compare needs two models or more: compare MODEL_A MODEL_B [MODEL_C ...]")
    if len(set(labels)) != len(labels):
        raise ReportError(f"compare needs different models, got {' '.join(labels)}")
    runs, source = load_runs(args)
    missing = [model for model in labels if not (runs["model"] == model).any()]
    if missing:  # before reading any run's files
        have = ", ".join(sorted(runs["model"].unique()))
        raise ReportError(
            f"no finished experiment with model={missing[0]} (models with runs: {have}); "
            f"run e.g. `dvc exp run --queue -S model={missing[0]} -S seed=1,2,3,4,5` then "
            "`dvc queue start`"
        )
    tables, sources = {}, {}
    for model in labels:
        mine = runs[runs["model"] == model]
        runs_of = zip(mine["rev"], mine["name"], strict=True)
        tables[model] = [source.read_ranks(rev, name) for rev, name in runs_of]
        sources[model] = f"{len(mine)} run(s), seeds {','.join(str(s) for s in mine['seed'])}"
    return tables, sources


def _comparison_text(args, r, label_a, label_b, sources, holm_p: float, m: int) -> str:
    """One comparison's lines; with m > 1 comparisons of A, the verdict is on the
    Holm-adjusted p and the Bonferroni-level CI."""
    pct = f"{100 * r.confidence:.4g}"
    alpha = 0.05
    p = holm_p if m > 1 else r.p_value
    significant = (r.ci_low > 0 or r.ci_high < 0) and p < alpha
    which = f"Holm-adjusted p over the {m} comparisons of {label_a}" if m > 1 else "p"
    verdict = (
        f"significant at alpha = {alpha:.2f}: the CI excludes 0 and {which} < {alpha:.2f}"
        if significant
        else f"not significant at alpha = {alpha:.2f} (that needs a CI excluding 0 and {which} "
        f"< {alpha:.2f})"
    )
    holm_line = f"  Holm-adjusted over {m} comparisons: p = {holm_p:.3g}\n" if m > 1 else ""
    return (
        f"{args.metric} on {args.split}, {r.n_users} users, per-user mean over each model's runs\n"
        f"  {label_a}: {r.mean_a:.4f}  ({sources[label_a]})\n"
        f"  {label_b}: {r.mean_b:.4f}  ({sources[label_b]})\n"
        f"  difference {label_a} - {label_b}: {r.mean_diff:+.4f}, {pct}% paired bootstrap CI "
        f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] ({r.n_resamples:,} resamples of users)\n"
        f"  Wilcoxon signed-rank (two-sided): p = {r.p_value:.3g}\n"
        f"{holm_line}"
        f"  -> {verdict}"
    )


def figure_runs(args: argparse.Namespace) -> tuple[pd.DataFrame, str, Source]:
    """The runs to draw, how to name them in a footer, and where they came from: the runs
    `table` would take, or, with none, the workspace run alone (one model, one seed)."""
    source, selection, where = _select(args)
    rows, runs = source.rows, selection.runs
    if not runs.empty:
        kinds = sorted(set(runs["kind"]))
        stamps = sorted(str(s)[:10] for s in runs["timestamp"].dropna())
        when = f", {stamps[0]}" + (f" to {stamps[-1]}" if stamps[-1] != stamps[0] else "")
        bases = sorted({str(b)[:7] for b in runs["baseline"].dropna()})
        what = "DVC experiments" if kinds == ["experiment"] else f"runs ({', '.join(kinds)})"
        described = f"{len(runs)} {what} of {', '.join(bases) or 'the workspace'}"
        return runs, described + (when if stamps else ""), source
    workspace = rows[rows["kind"] == "workspace"] if not rows.empty else rows
    alone = select_runs(workspace, include_workspace=True, where=where).runs
    if alone.empty:
        raise ReportError(
            "no finished experiments and no evaluated workspace run: run `dvc repro` (one "
            f"model, one seed) or {QUEUE_HINT}"
        )
    print(
        "no finished experiments: drawing the workspace run alone (one model, one seed, no "
        f"band); for bands over seeds, {QUEUE_HINT}",
        file=sys.stderr,
    )
    return alone, "the workspace run", source


def cmd_figures(args: argparse.Namespace) -> None:
    from deepfm.results.figures import RunFiles, render  # matplotlib: only for figures

    runs, described, source = figure_runs(args)
    files = {}
    for rev, name in zip(runs["rev"], runs["name"], strict=True):
        try:
            ranks = source.read_ranks(rev, name)
        except ReportError as e:  # the curves and eval.json can still be drawn
            print(f"warning: {e}", file=sys.stderr)
            ranks = None
        files[name] = RunFiles(curves=source.read_curves(rev), ranks=ranks)
    dataset = sorted({str(d) for d in runs.get("param.dataset", pd.Series()).dropna()})
    footer = f"{'/'.join(dataset) or 'dataset ?'}, {described}"
    written, notes = render(
        runs, files, args.out, split=args.split, dpi=args.dpi, n_resamples=args.resamples,
        seed=args.seed, footer=footer,
    )  # fmt: skip
    for note in notes:
        print(f"not drawn: {note}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    runs, source = load_runs(args)
    written = write_records(runs, args.dir, source.read_ranks, source.read_curves)
    print(f"wrote {written} run record(s) to {args.dir}", file=sys.stderr)


def cmd_sweep(args: argparse.Namespace) -> None:
    """Queue and run the headline sweep, then export, table and draw it (`make results`)."""
    import yaml

    from deepfm.config import MODEL_SECTIONS
    from deepfm.results.headline import make_plan, run_plan

    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    unknown = sorted(set(args.models or []) - set(MODEL_SECTIONS))
    if unknown:
        raise ReportError(f"unknown model(s) {unknown}; registered: {', '.join(MODEL_SECTIONS)}")
    plan = make_plan(
        list(args.models or MODEL_SECTIONS), args.seeds, args.tie_breaks,
        default_threads=params["train"]["num_threads"] or 1, threads=args.threads,
    )  # fmt: skip
    print(
        f"{len(plan.experiments)} experiments, {plan.jobs} at a time with {plan.threads} "
        "torch thread(s) each",
        file=sys.stderr,
    )
    if args.dry_run:
        print("\n".join(" ".join(argv) for argv in plan.experiments))
        print(f"dvc queue start -j {plan.jobs}")
        return
    run_plan(plan)
    for tie_break in args.tie_breaks:  # one (model, seed) has a run per tie-break: a folder each
        records = records_for(args.records, tie_break)
        where = ["--where", f"split.tie_break={tie_break}"]
        table = ["--out", args.table] if tie_break == TIE_BREAKS[0] else []
        for argv in (["export", records, *where], ["table", "--records", records, *table]):
            sub = parser().parse_args(argv)
            sub.func(sub)
    headline = records_for(args.records, TIE_BREAKS[0])
    sub = parser().parse_args(["figures", "--records", headline, "--out", args.figures])
    sub.func(sub)


def records_for(records: str, tie_break: str) -> str:
    """The records folder of a tie-break: the headline's (item_id) is `records` itself."""
    return records if tie_break == TIE_BREAKS[0] else f"{records}-{tie_break}"


def _parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options every report shares: which runs (`source`), and the records and split
    the reports read (`report`)."""
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--from-json", metavar="FILE", help="saved `dvc exp show --json` output")
    source.add_argument(
        "--all-commits", action="store_true", help="experiments of every commit (dvc exp show -A)"
    )
    rev = "experiments of this baseline commit (default HEAD); repeat for several"
    source.add_argument("--rev", metavar="COMMIT", action="append", help=rev)
    source.add_argument(
        "--include-baselines", action="store_true", help="count baseline commits as runs too"
    )
    source.add_argument(
        "--include-workspace", action="store_true", help="count the workspace as a run too"
    )
    source.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="only runs with this param value, e.g. split.tie_break=random (repeatable)",
    )
    # what the reports add: committed run records as the source, and the split to report
    report = argparse.ArgumentParser(add_help=False)
    report.add_argument(
        "--records",
        metavar="DIR",
        help="read the run records `export` wrote to DIR, not DVC (no --from-json, --rev, "
        "--all-commits)",
    )
    report.add_argument("--split", default="test", choices=("test", "val"))
    return source, report


def _add_sweep(sub) -> None:
    """`report sweep` (make results): its own options, none of the run-source ones."""
    w = sub.add_parser(
        "sweep",
        help="queue and run the headline sweep (models x seeds x tie-breaks), then export, "
        "table and figures (make results)",
    )
    w.add_argument("--models", nargs="+", metavar="MODEL", help="default: every registered one")
    w.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    w.add_argument("--tie-breaks", nargs="+", default=list(TIE_BREAKS), choices=TIE_BREAKS)
    w.add_argument(
        "--threads", type=int, help="torch threads per run (default: params.yaml's; "
        "another value reproduces itself, not dvc.lock)",
    )  # fmt: skip
    w.add_argument("--params", default="params.yaml", metavar="FILE")
    w.add_argument("--records", default=str(RECORDS), metavar="DIR")
    w.add_argument("--table", default="reports/results.md", metavar="FILE")
    w.add_argument("--figures", default="reports/figures", metavar="DIR")
    w.add_argument("--dry-run", action="store_true", help="print the plan; queue nothing")
    w.set_defaults(func=cmd_sweep, usage_error=w.error)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfm report", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    source, report = _parents()

    t = sub.add_parser("table", parents=[source, report], help="mean ± std over seeds per model")
    t.add_argument("--out", default="", metavar="FILE", help="also write the markdown here")
    t.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="METRIC")
    t.set_defaults(func=cmd_table, usage_error=t.error)

    c = sub.add_parser(
        "compare", parents=[source, report], help="paired per-user test of two models"
    )
    models = "MODEL_A MODEL_B [MODEL_C ...]: A against each other model; with several, one family:"
    c.add_argument(
        "models", nargs="*", metavar="MODEL", help=f"{models} Holm-adjusted p, CIs at 1 - 0.05 / m"
    )
    c.add_argument(
        "--metric", default=MAIN_METRIC, help=f"{', '.join(per_user_metrics())}; full_ = full rank"
    )
    c.add_argument("--ranks-a", nargs="+", metavar="FILE", help="rank parquet file(s) of A")
    c.add_argument("--ranks-b", nargs="+", metavar="FILE", help="rank parquet file(s) of B")
    c.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.set_defaults(func=cmd_compare, usage_error=c.error)

    f = sub.add_parser("figures", parents=[source, report], help="PNG figures of the runs")
    f.add_argument("--out", default="reports/figures", help="folder for the PNGs")
    f.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNGs")
    f.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (CIs)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    f.set_defaults(func=cmd_figures, usage_error=f.error)

    e = sub.add_parser(
        "export", parents=[source], help="write the runs `table` takes as run records to commit"
    )
    dir_help = f"folder of the records, replaced whole (default {RECORDS})"
    e.add_argument("dir", nargs="?", default=str(RECORDS), metavar="DIR", help=dir_help)
    e.set_defaults(func=cmd_export, records=None, usage_error=e.error)  # from DVC only

    _add_sweep(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "sweep":  # none of the run-source options below
        return _run(args)
    if args.rev and args.all_commits:
        args.usage_error("--rev and --all-commits exclude each other: choose one baseline or all")
    if args.records and (args.from_json or args.rev or args.all_commits):
        args.usage_error(
            "--records reads run records, not DVC: drop --from-json, --rev and --all-commits"
        )
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        args.func(args)
    except (ReportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1  # a runtime failure; argparse exits 2 for a usage error
    return 0


if __name__ == "__main__":
    sys.exit(main())
