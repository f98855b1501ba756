"""The figures (`deepfm report figures`): what each one shows, checked by hand, and
the PNGs themselves: they open, have the expected size and are not blank."""

from __future__ import annotations

import copy
import html
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import imread

from deepfm.config import MODEL_SECTIONS
from deepfm.evaluation import metrics as M
from deepfm.results import ReportError, cli, figures
from deepfm.results.figures import (
    MODEL_COLORS,
    SIZES,
    RunFiles,
    at_k_table,
    bin_labels,
    curve_band,
    plot_val_curves,
    rank_bins,
    render,
    user_ci_table,
)
from deepfm.results.runs import parse_exp_show, select_runs
from deepfm.results.statistics import bootstrap_mean_ci

REPO = Path(__file__).resolve().parents[1]
DPI = 50
NAMES = ("val_curves", "metrics_at_k", "models_ci", "rank_distribution")
N_USERS = 60
N_ITEMS = 400
KS = (5, 10, 20)


# ------------------------------------------------------------------------ a small synthetic run


def eval_metrics(ranks: pd.DataFrame, split: str = "test") -> dict:
    """eval.json's cutoff metrics of a rank table, computed as the eval stage does."""
    part = ranks[ranks["split"] == split]
    out = {"users": len(part)}
    for ranking, prefix in M.RANKINGS.items():
        r = part[f"{ranking}_rank"].to_numpy()
        for k in KS:
            out[f"{prefix}hr@{k}"] = M.hit_rate(r, k)
            out[f"{prefix}ndcg@{k}"] = M.ndcg(r, k)
    out["auc"], out["logloss"] = 0.9, 0.3
    return out


def make_ranks(model: str, seed: int) -> pd.DataFrame:
    """Per-user ranks of N_USERS users on val and test: deepfm ranks better than itempop."""
    rng = np.random.default_rng(seed * 10 + len(model))
    scale = 20 if model == "deepfm" else 120
    frames = []
    for split in ("val", "test"):
        full = np.minimum(rng.geometric(1 / scale, N_USERS), N_ITEMS)
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "user_id": np.arange(1, N_USERS + 1),
                    "item_id": np.arange(101, 101 + N_USERS),
                    "sampled_rank": np.maximum(1, full // 4),
                    "full_rank": full,
                    "num_candidates": 100,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def make_curves(model: str, seed: int) -> dict[str, pd.Series]:
    """deepfm: 5 epochs, validated every epoch, seeds apart by 0.01; itempop: one val row at
    step 0 (fitted in closed form), no loss."""
    if model == "itempop":
        return {
            "val/full_ndcg@10": pd.Series([0.03 + 0.002 * seed], index=[0]),
            "val/full_hr@10": pd.Series([0.06], index=[0]),
            "val/hr@10": pd.Series([0.04 + 0.001 * seed], index=[0]),
        }
    steps = np.arange(5)
    return {
        "val/full_ndcg@10": pd.Series(0.05 + 0.01 * steps + 0.01 * seed, index=steps),
        "val/full_hr@10": pd.Series(0.10 + 0.02 * steps + 0.01 * seed, index=steps),
        "val/hr@10": pd.Series(0.20 + 0.02 * steps, index=steps),
        "train/loss": pd.Series(0.5 / (steps + 1) + 0.01 * seed, index=steps),
    }


# (model, seed, a short rev): the experiments of the fabricated `dvc exp show`
RUNS = [
    ("deepfm", 1, "aaa1"),
    ("deepfm", 2, "aaa2"),
    ("itempop", 1, "bbb1"),
    ("itempop", 2, "bbb2"),
]


def entry(rev: str, model: str, seed: int, name: str | None, stamp: str | None) -> dict:
    """One entry of `dvc exp show --json` (DVC 3.x) with the fields the results code reads."""
    return {
        "rev": rev,
        "name": name,
        "error": None,
        "data": {
            "rev": rev,
            "timestamp": stamp,
            "params": {"params.yaml": {"data": {"seed": seed, "model": model, "dataset": "toy"}}},
            "metrics": {
                "metrics/eval.json": {
                    "data": {
                        "test": eval_metrics(make_ranks(model, seed)),
                        "val": eval_metrics(make_ranks(model, seed), "val"),
                        "model": model,
                        "parameters": 1000,
                    }
                },
                "metrics/timing/summary.json": {"data": {"seconds_per_epoch": 1.0}},
            },
        },
    }


def exp_show(with_experiments: bool = True) -> list:
    workspace = entry("workspace", "deepfm", 42, None, None)
    baseline = entry("c0ffee" * 6 + "abcd", "deepfm", 42, "main", "2026-12-01T10:00:00")
    baseline["experiments"] = [
        {
            "executor": None,
            "revs": [entry(rev * 10, model, seed, f"exp-{rev}", f"2026-12-01T11:0{i}:00")],
        }
        for i, (model, seed, rev) in enumerate(RUNS)
    ]
    if not with_experiments:
        baseline["experiments"] = []
    return [workspace, baseline]


@pytest.fixture
def runs() -> pd.DataFrame:
    return select_runs(parse_exp_show(exp_show())).runs


@pytest.fixture
def files(runs) -> dict[str, RunFiles]:
    return {
        name: RunFiles(curves=make_curves(model, seed), ranks=make_ranks(model, seed))
        for name, model, seed in zip(runs["name"], runs["model"], runs["seed"], strict=True)
    }


# ----------------------------------------------------------------------------- PNG checks


def assert_valid_png(path: Path, name: str, dpi: int = DPI) -> np.ndarray:
    """Opens as a PNG of the figure's size at dpi, and is not blank: pixels vary, there are
    more than 50 distinct colours (a white page has 1), and the data are drawn: more than 500
    coloured pixels (axes, ticks and text are grey; every model has a colour)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = imread(path)
    width, height = SIZES[name]
    assert image.shape[:2] == (round(height * dpi), round(width * dpi)), (name, image.shape)
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.01, f"{path}: blank"
    colours = len(np.unique((rgb * 255).round().astype(np.uint8), axis=0))
    coloured = int((rgb.max(axis=1) - rgb.min(axis=1) > 0.1).sum())
    assert colours > 50 and coloured > 500, f"{path}: {colours} colours, {coloured} coloured pixels"
    return image


def test_the_png_check_fails_on_a_blank_or_a_text_only_figure(tmp_path):
    """The check can fail: an empty figure, black text alone, and the wrong size are refused."""
    blank = Figure(figsize=SIZES["models_ci"])
    blank.savefig(tmp_path / "blank.png", dpi=DPI)
    with pytest.raises(AssertionError, match="blank"):
        assert_valid_png(tmp_path / "blank.png", "models_ci")
    text = Figure(figsize=SIZES["models_ci"])
    text.text(0.5, 0.5, "no data", fontsize=30)
    text.savefig(tmp_path / "text.png", dpi=DPI)
    with pytest.raises(AssertionError, match=" 0 coloured pixels"):
        assert_valid_png(tmp_path / "text.png", "models_ci")
    wrong = Figure(figsize=(4, 4))
    wrong.subplots().plot([1, 2, 3], [3, 1, 2])
    wrong.savefig(tmp_path / "small.png", dpi=DPI)
    with pytest.raises(AssertionError, match="models_ci"):
        assert_valid_png(tmp_path / "small.png", "models_ci")


# -------------------------------------------------------------------- what the figures show


def test_curve_band_by_hand():
    a = pd.Series([0.1, 0.2, 0.4], index=[4, 9, 14])
    b = pd.Series([0.3, 0.1], index=[9, 4])  # stopped early; out of order
    band = curve_band([a, b])
    assert list(band.index) == [4, 9, 14]
    assert band["mean"].tolist() == pytest.approx([0.1, 0.25, 0.4])
    assert band["low"].tolist() == pytest.approx([0.1, 0.2, 0.4])
    assert band["high"].tolist() == pytest.approx([0.1, 0.3, 0.4])
    assert band["n"].tolist() == [2, 2, 1]


def test_at_k_table_by_hand(runs):
    table = at_k_table(runs)
    assert len(table) == 2 * 2 * 2 * len(KS)  # models x rankings x (hr, ndcg) x ks
    row = table[
        (table["model"] == "deepfm")
        & (table["ranking"] == "full")
        & (table["metric"] == "ndcg")
        & (table["k"] == 10)
    ].iloc[0]
    test = [make_ranks("deepfm", s).query("split == 'test'") for s in (1, 2)]
    values = [M.ndcg(t["full_rank"].to_numpy(), 10) for t in test]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert (row["low"], row["high"]) == pytest.approx((min(values), max(values)))
    assert row["n"] == 2
    sampled = table[(table["ranking"] == "sampled") & (table["metric"] == "hr")]
    assert sorted(sampled["k"].unique()) == list(KS)


def test_metrics_at_k_with_equal_seeds_draws(runs):
    """Three equal values have a float mean a hair above them (0.1 * 3 / 3 > 0.1): the bars
    must still be drawn (matplotlib refuses a negative error), of length zero."""
    three = pd.concat([runs[runs["model"] == "itempop"].iloc[:1]] * 3, ignore_index=True)
    three["test.full_hr@10"] = 0.1
    assert three["test.full_hr@10"].mean() > 0.1  # the float effect this guards against
    fig = figures.plot_metrics_at_k(three)
    hr = fig.axes[0]
    line = hr.lines[0]  # the data line (then the bars' caps)
    assert line.get_ydata()[list(line.get_xdata()).index(10)] == pytest.approx(0.1)


def test_user_ci_table_by_hand(runs, files):
    table = user_ci_table(runs, files, n_resamples=500, seed=3)
    assert set(table["metric"]) == {"full_ndcg@10", "full_hr@10", "hr@10"}
    row = table[(table["model"] == "deepfm") & (table["metric"] == "full_hr@10")].iloc[0]
    hits = [
        (make_ranks("deepfm", s).query("split == 'test'")["full_rank"].to_numpy() <= 10) * 1.0
        for s in (1, 2)
    ]
    per_user = (hits[0] + hits[1]) / 2  # each user averaged over the seeds
    assert row["mean"] == pytest.approx(per_user.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        bootstrap_mean_ci(per_user, n_resamples=500, seed=3)
    )
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    assert row["run_means"] == pytest.approx([h.mean() for h in hits])
    assert (row["n_users"], row["n_runs"]) == (N_USERS, 2)


def test_val_curves_draw_the_mean_the_band_and_a_flat_line_for_no_training(runs, files):
    fig = plot_val_curves(runs, files)
    ndcg = fig.axes[0]
    assert ndcg.get_title() == "validation NDCG@10 (full) ↑"
    lines = {line.get_label(): line for line in ndcg.lines}
    deepfm = lines["deepfm (2 seeds)"]
    assert deepfm.get_xdata().tolist() == [1, 2, 3, 4, 5]  # epochs: dvclive's step + 1
    assert deepfm.get_ydata() == pytest.approx(0.05 + 0.01 * np.arange(5) + 0.015)
    band = [c for c in ndcg.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1  # deepfm's fill_between: min-max over the seeds
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((0.06, 0.05 + 0.04 + 0.02))
    itempop = lines["itempop (2 seeds), no training"]
    assert itempop.get_ydata()[0] == pytest.approx(0.03 + 0.003)
    (span,) = ndcg.patches  # itempop's seeds: 0.032 to 0.034, across the whole axis
    box = span.get_path().transformed(span.get_patch_transform()).get_extents()
    assert (box.y0, box.y1) == pytest.approx((0.032, 0.034))
    assert deepfm.get_marker() == "o"  # 5 points: marked, so 4 or 5 read as points
    assert fig.axes[3].get_title() == "training loss, relative to each model's epoch 1"
    labels = [line.get_label() for line in fig.axes[3].lines]
    assert [label for label in labels if not label.startswith("_")] == ["deepfm (2 seeds)"]
    assert "min–max over seeds" in fig.get_suptitle()


def test_the_loss_panel_divides_each_run_s_loss_by_its_first_epoch(runs, files):
    """Objectives differ in level (BCE ~0.3, SASRec's softmax ~6): each run's loss over its
    own epoch-1 value, then the mean and band over seeds; a dotted line at 1."""
    files[runs["name"].iloc[0]].curves["train/loss"] *= 20  # another objective, 20x the level
    loss = plot_val_curves(runs, files).axes[3]
    assert loss.get_ylabel() == "loss / the model's epoch-1 loss"
    line, one = loss.lines
    per_seed = [(0.5 / (np.arange(5) + 1) + 0.01 * s) / (0.5 + 0.01 * s) for s in (1, 2)]
    assert line.get_ydata() == pytest.approx(np.mean(per_seed, axis=0))
    assert line.get_ydata()[0] == pytest.approx(1.0)
    assert list(one.get_ydata()) == [1.0, 1.0]
    (band,) = [c for c in loss.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(1.0) and ys.min() == pytest.approx(per_seed[0][-1])


def test_relative_loss_of_a_zero_first_epoch_is_not_drawn():
    assert figures.relative_loss(pd.Series([2.0, 1.0], index=[1, 0])).tolist() == [1.0, 2.0]
    assert figures.relative_loss(pd.Series([0.0, 1.0])).isna().all()


# Machado et al. (2009), severity 1: linear RGB as seen with deuteranopia and protanopia
CVD = {
    "normal": np.eye(3),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
         [-0.011820, 0.042940, 0.968881]]
    ),
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
         [-0.003882, -0.048116, 1.051998]]
    ),
}  # fmt: skip


def lab(color, vision: str) -> np.ndarray:
    """CIELAB (D65) of a colour as seen with `vision`: distances in it are perceptual."""
    c = np.asarray(to_rgb(color))
    srgb = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    linear = np.clip(CVD[vision] @ srgb, 0, 1)
    xyz = (
        np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
        @ linear
        / np.array([0.95047, 1.0, 1.08883])
    )
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_registered_model_has_a_colour_told_apart_also_with_colour_blindness():
    """Every model of the registry has its colour, and any two differ by ΔE > 10 with normal,
    deuteranopic and protanopic vision (tab10 by sorted name, on the results' 7 models, gave
    ItemPop and LR a purple and a brown hard to tell apart, and DeepFM and ItemPop ΔE 6 with
    protanopia)."""
    assert set(MODEL_COLORS) == set(MODEL_SECTIONS)
    colors = figures.model_colors(list(MODEL_SECTIONS))  # as the figures draw them
    for vision in CVD:
        for a, b in itertools.combinations(MODEL_SECTIONS, 2):
            distance = np.linalg.norm(lab(colors[a], vision) - lab(colors[b], vision))
            assert distance > 10, (vision, a, b, distance)


def test_a_model_has_the_same_colour_in_every_figure_whatever_else_is_drawn(runs, files):
    """DeepFM's colour is MODEL_COLORS's in all four figures, and ItemPop's does not change
    when it is drawn alone (a colour by place among the models drawn would)."""
    assert figures.model_colors(["itempop"]) == {"itempop": MODEL_COLORS["itempop"]}
    both = figures.model_colors(runs["model"])
    assert both == {m: MODEL_COLORS[m] for m in ("deepfm", "itempop")}
    assert figures.model_colors(["zz_old", "aa_old"]) == {"zz_old": "#4D4D4D", "aa_old": "#7F7F7F"}
    table = user_ci_table(runs, files, n_resamples=50)
    seen = {
        "val_curves": plot_val_curves(runs, files).axes[0].lines[0].get_color(),
        "metrics_at_k": figures.plot_metrics_at_k(runs).axes[0].lines[0].get_color(),
        "models_ci": figures.plot_models_ci(table).axes[0].lines[-1].get_color(),
        "rank_distribution": figures.plot_rank_distribution(runs, files)
        .axes[0]
        .patches[0]
        .get_facecolor(),
    }
    for figure, color in seen.items():
        assert to_rgb(color) == to_rgb(MODEL_COLORS["deepfm"]), figure
    alone = runs[runs["model"] == "itempop"]
    flat = plot_val_curves(alone, files).axes[0].lines[0]
    assert to_rgb(flat.get_color()) == to_rgb(MODEL_COLORS["itempop"])


def test_rank_bins_cover_every_rank_once():
    edges = rank_bins(1682)
    assert edges.tolist() == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1683]
    assert bin_labels(edges)[:3] == ["1", "2–4", "5–9"]
    assert bin_labels(edges)[-1] == "1000–1682"
    counts, _ = np.histogram(np.arange(1, 1683), bins=edges)
    assert counts.tolist() == [1, 3, 5, 10, 30, 50, 100, 300, 500, 683]
    assert rank_bins(1).tolist() == [1, 2]
    assert rank_bins(2).tolist() == [1, 2, 3]


def test_rank_distribution_bars_are_shares_of_users(runs, files):
    fig = figures.plot_rank_distribution(runs, files)
    hist = fig.axes[0]
    heights = [p.get_height() for p in hist.patches]
    n_bins = len(rank_bins(N_ITEMS)) - 1
    assert len(heights) == 2 * n_bins  # deepfm's bars, then itempop's
    pooled = np.concatenate(
        [make_ranks("deepfm", s).query("split == 'test'")["full_rank"] for s in (1, 2)]
    )
    expected = np.histogram(pooled, bins=rank_bins(N_ITEMS))[0] / len(pooled)
    assert heights[:n_bins] == pytest.approx(expected)
    assert sum(heights[n_bins:]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """The Figure behind every PNG the command writes."""
    seen: dict[str, Figure] = {}
    original = figures.save_png

    def keep(fig, path, dpi):
        seen[Path(path).stem] = fig
        original(fig, path, dpi)

    monkeypatch.setattr(figures, "save_png", keep)
    return seen


def test_cli_figures_from_experiments(tmp_path, monkeypatch, capsys, saved):
    """Two models x two seeds: every figure, read through the same seam as the real runs."""
    show = tmp_path / "show.json"
    show.write_text(json.dumps(exp_show()))
    by_rev = {rev * 10: (model, seed) for model, seed, rev in RUNS}
    read = []
    monkeypatch.setattr(cli, "read_curves_at", lambda rev: make_curves(*by_rev[rev]))

    def ranks_at(rev, name):
        read.append(name)
        return make_ranks(*by_rev[rev])

    monkeypatch.setattr(cli, "read_ranks_at", ranks_at)
    out = tmp_path / "figs"
    args = ["figures", "--from-json", str(show), "--out", str(out), "--dpi", str(DPI)]
    assert cli.main([*args, "--resamples", "300"]) == 0
    printed = capsys.readouterr()
    assert sorted(read) == ["exp-aaa1", "exp-aaa2", "exp-bbb1", "exp-bbb2"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in NAMES)
    for name in NAMES:
        assert f"wrote {out / name}.png" in printed.err  # stdout is for results
        assert_valid_png(out / f"{name}.png", name)
    footer = saved["models_ci"].get_supxlabel()
    assert footer == "toy, 4 DVC experiments of c0ffeec, 2026-12-01"
    ci = saved["models_ci"].axes[0]
    assert [t.get_text() for t in ci.get_yticklabels()] == ["itempop (n=2)", "deepfm (n=2)"]
    at_k = saved["metrics_at_k"].axes[0]
    assert at_k.get_title() == "HR@K, ranked against all items"
    assert at_k.get_xticks().tolist() == list(KS)


def test_cli_figures_without_a_run_s_ranks_draws_the_rest(tmp_path, monkeypatch, capsys):
    """A rank table missing from the DVC cache: a warning naming it, and the figures that
    need no ranks are still drawn."""
    show = tmp_path / "show.json"
    show.write_text(json.dumps(exp_show()))
    by_rev = {rev * 10: (model, seed) for model, seed, rev in RUNS}
    monkeypatch.setattr(cli, "read_curves_at", lambda rev: make_curves(*by_rev[rev]))

    def ranks_at(rev, name):
        if name == "exp-bbb2":
            raise ReportError(f"cannot read metrics/eval_ranks.parquet of experiment {name}")
        return make_ranks(*by_rev[rev])

    monkeypatch.setattr(cli, "read_ranks_at", ranks_at)
    out = tmp_path / "figs"
    assert cli.main(["figures", "--from-json", str(show), "--out", str(out), "--dpi", "40"]) == 0
    err = capsys.readouterr().err
    assert "warning: cannot read metrics/eval_ranks.parquet of experiment exp-bbb2" in err
    assert "not drawn: models_ci, rank_distribution" in err
    assert sorted(p.name for p in out.iterdir()) == ["metrics_at_k.png", "val_curves.png"]


def write_workspace_run(root: Path) -> None:
    """The files `dvc repro` leaves: dvclive TSVs and the rank table, at dvc.yaml's paths."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    curves = root / "metrics" / "train" / "plots" / "metrics"
    for key, series in make_curves("deepfm", 42).items():
        path = curves / f"{key}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        metric = key.rsplit("/", 1)[1]
        series.rename(metric).rename_axis("step").reset_index().to_csv(path, sep="\t", index=False)
    make_ranks("deepfm", 42).to_parquet(root / "metrics" / "eval_ranks.parquet")


def test_cli_figures_from_the_workspace_run_alone(tmp_path, monkeypatch, capsys, saved):
    """No experiments: the workspace run (one model, one seed) is drawn, without a band."""
    write_workspace_run(tmp_path)
    show = tmp_path / "show.json"
    show.write_text(json.dumps(exp_show(with_experiments=False)))
    monkeypatch.chdir(tmp_path)
    assert (
        cli.main(["figures", "--from-json", str(show), "--dpi", str(DPI), "--resamples", "300"])
        == 0
    )
    printed = capsys.readouterr()
    assert "drawing the workspace run alone" in printed.err
    out = tmp_path / "reports" / "figures"
    for name in NAMES:
        assert_valid_png(out / f"{name}.png", name)
    curves = saved["val_curves"]
    ndcg = curves.axes[0]
    assert [line.get_label() for line in ndcg.lines] == ["deepfm (seed 42)"]
    assert ndcg.lines[0].get_ydata() == pytest.approx(0.05 + 0.01 * np.arange(5) + 0.42)
    assert not [c for c in ndcg.collections if isinstance(c, PolyCollection)]  # one seed
    assert curves.legends[0].get_title().get_text() == "toy, the workspace run"
    ci = saved["models_ci"].axes[0]
    assert [t.get_text() for t in ci.get_yticklabels()] == ["deepfm (n=1)"]


def test_cli_figures_with_no_run_at_all(tmp_path, capsys):
    bare = copy.deepcopy(exp_show(with_experiments=False))
    bare[0]["data"]["metrics"] = {}  # the workspace has not been evaluated
    show = tmp_path / "show.json"
    show.write_text(json.dumps(bare))
    assert cli.main(["figures", "--from-json", str(show), "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "error: no finished experiments and no evaluated workspace run" in err
    assert "dvc repro" in err


def test_ctr_runs_skip_the_rank_figures_and_drop_older_pngs(tmp_path, runs, files):
    """The ctr protocol's table holds rows, not ranks: no CI / rank figures, and an older PNG
    of those names (from other runs) is removed rather than left to mislead."""
    rows = pd.DataFrame({"split": "test", "row": range(4), "label": [0, 1, 0, 1], "logit": 0.0})
    ctr = {n: RunFiles(curves={"val/auc": pd.Series([0.7, 0.75], index=[0, 1])}, ranks=rows)
           for n in runs["name"]}  # fmt: skip
    ctr_runs = runs[[c for c in runs.columns if "@" not in c]]  # no HR@K / NDCG@K
    (tmp_path / "models_ci.png").write_bytes(b"old")
    written, notes = render(ctr_runs, ctr, tmp_path, dpi=DPI)
    assert [p.name for p in written] == ["val_curves.png"]
    assert not (tmp_path / "models_ci.png").exists()
    assert any("ctr protocol scores rows" in n for n in notes)
    assert any("no HR@K / NDCG@K" in n for n in notes)
    assert_valid_png(tmp_path / "val_curves.png", "val_curves")


def test_a_rank_table_of_other_users_is_refused(runs, files):
    files[runs["name"].iloc[1]].ranks = make_ranks("deepfm", 2).query("user_id != 5")
    with pytest.raises(ReportError, match="evaluated on different users"):
        user_ci_table(runs, files, n_resamples=10)


# --------------------------------------------------------------- the docs page, in a browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-file-access-from-files", "--hide-scrollbars",
]  # fmt: skip
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def page_html(markdown: str, base: str) -> str:
    """A docs page as plain HTML, laid out as a reader sees it: headings, paragraphs, code
    blocks and images (each image records its natural width once loaded, 0 if it fails)."""
    body, para, code = [], [], None
    for line in markdown.splitlines():
        if line.startswith("```"):
            if code is None:
                code = []
            else:
                body.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            continue
        if code is not None:
            code.append(line)
            continue
        ends_paragraph = not line.strip() or line.startswith("#") or IMAGE.fullmatch(line.strip())
        if ends_paragraph and para:
            body.append(f"<p>{html.escape(' '.join(para))}</p>")
            para = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif image := IMAGE.fullmatch(line.strip()):
            alt, src = (html.escape(s, quote=True) for s in image.groups())
            body.append(
                f'<p><img src="{src}" alt="{alt}" style="max-width:100%" '
                'onload="this.dataset.w=this.naturalWidth" onerror="this.dataset.w=0"></p>'
            )
        elif line.strip():
            para.append(line.strip())
    if para:
        body.append(f"<p>{html.escape(' '.join(para))}</p>")
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><base href="{base}">'
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def test_page_html_keeps_headings_images_and_code():
    out = page_html("# T\n\ntext\nmore\n\n![a b](x/y.png)\n```\n<k>\n```\n", "file:///d/")
    assert '<base href="file:///d/">' in out
    assert '<h1>T</h1><p>text more</p><p><img src="x/y.png" alt="a b"' in out
    assert "<pre>&lt;k&gt;</pre>" in out


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no headless Chromium (/usr/bin/chromium)")
@pytest.mark.parametrize("name", ["docs/figures.md", "README.md"])
def test_the_pages_show_every_figure_in_headless_chromium(tmp_path, name):
    """docs/figures.md (every figure of reports/figures/) and the README, as HTML, in headless
    Chromium: each image is on the page and has loaded (its natural width after the page
    settled), and the screenshot is not blank. FIGURES_SCREENSHOT=<file.png> keeps it."""
    markdown_file = REPO / name
    markdown = markdown_file.read_text(encoding="utf-8")
    sources = [src for _, src in IMAGE.findall(markdown)]
    if name == "docs/figures.md":
        assert sorted(Path(s).name for s in sources) == sorted(f"{n}.png" for n in NAMES)
    assert sources and all(Path(s).stem in SIZES for s in sources), sources
    page = tmp_path / "page.html"
    page.write_text(page_html(markdown, markdown_file.parent.as_uri() + "/"), encoding="utf-8")

    def chromium(*args: str) -> str:
        profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip

    dom = chromium("--virtual-time-budget=10000", "--dump-dom")
    widths = [int(w) for w in re.findall(r'data-w="(\d+)"', dom)]
    assert len(widths) == len(sources), dom[-3000:]
    assert all(w == SIZES[Path(s).stem][0] * 100 for w, s in zip(widths, sources, strict=True))
    shot = tmp_path / "figures.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,4200", "--virtual-time-budget=10000")
    image = imread(shot)
    assert image.shape[:2] == (4200, 1200)
    assert len(np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
    if os.environ.get("FIGURES_SCREENSHOT"):
        shutil.copy(shot, os.environ["FIGURES_SCREENSHOT"])
