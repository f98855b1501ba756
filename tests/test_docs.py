"""The docs say what the committed files say: the README's results table is the report's
output from the committed run records, and the numbers it quotes for the default run are
metrics/eval.json's and the records'."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from deepfm.results import cli
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
RECORDS = REPO / "results" / "runs"


def _records(model: str) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted((RECORDS / model).glob("*.json"))
        if not p.name.endswith(".curves.json")
    ]


def test_the_readme_table_is_the_reports_output_from_the_records(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["table", "--records", str(RECORDS)]) == 0
    table = capsys.readouterr().out.strip()
    assert table.startswith("*Split: test") and table.count("\n| ") >= 7
    assert table in README, "README's table differs from `deepfm report table --records`"
    results = (REPO / "docs/results.md").read_text(encoding="utf-8")
    current = results.split("\n## ")[2]  # "Current results", after "How the tables ... made"
    assert current.startswith("Current results") and table in current
    header = table.splitlines()[2]
    for page, text in (("README.md", README), ("docs/results.md's current section", current)):
        assert text.count(header) == 1, f"{page} holds a results table besides the report's"


def test_the_readmes_default_run_is_the_committed_metrics_and_inside_its_row():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    metrics = json.loads((REPO / "metrics" / "eval.json").read_text())
    found = re.search(
        r"The default `dvc repro` \((\w+), seed (\d+), (\d+) threads\) scores ([0-9.]+) test "
        r"full NDCG@10,\s+inside the row's seed range \(([0-9.]+)-([0-9.]+)\)",
        README,
    )
    assert found, "the README no longer quotes the default run"
    model, seed, threads, score, low, high = found.groups()
    assert (model.lower(), int(seed)) == (params["model"], params["seed"])
    assert int(threads) == params["train"]["num_threads"] == metrics["environment"]["threads"]
    assert metrics["model"] == params["model"]
    assert score == f"{metrics['test']['full_ndcg@10']:.4f}"
    seeds = [r["test.full_ndcg@10"] for r in _records(params["model"])]
    assert len(seeds) >= 5
    assert (low, high) == (f"{min(seeds):.4f}", f"{max(seeds):.4f}")
    assert min(seeds) <= metrics["test"]["full_ndcg@10"] <= max(seeds)


@pytest.mark.parametrize(
    "path", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))]
)
def test_relative_links_lead_to_files(path):
    page = REPO / path if path == "README.md" else REPO / "docs" / path
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{path} links to {target}, which is missing"


def test_the_readmes_box_quotes_the_default_run_and_the_tables_best_row(capsys, monkeypatch):
    box = README.split("```")[1]
    metrics = json.loads((REPO / "metrics" / "eval.json").read_text())
    reproduce = re.search(r"reproduce\s+make repro .*test full NDCG@10 ([0-9.]+)", box)
    assert reproduce and reproduce.group(1) == f"{metrics['test']['full_ndcg@10']:.4f}"
    monkeypatch.chdir(REPO)
    assert cli.main(["table", "--records", str(RECORDS)]) == 0
    top = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1]
    model, cell = top.split("|")[1].strip(), top.split("|")[5].strip()  # sorted by that cell
    best = re.search(r"best\s+(\S+)\s+test full NDCG@10 (\S+ ± \S+)", box)
    assert best and best.groups() == (model, cell), (best and best.groups(), top)
    tests = re.search(r"test\s+make test\s+(\d+) tests", box)
    assert tests, box


COMPARED = ["deepfm", "sasrec", "item_cooccurrence", "fm", "ease", "itempop", "lr"]


@pytest.mark.parametrize("metric", ["full_ndcg@10", "full_hr@10"])
def test_the_paired_tests_in_results_md_are_the_reports_output(capsys, monkeypatch, metric):
    """docs/results.md's paired tests regenerate offline from the committed records."""
    monkeypatch.chdir(REPO)
    args = ["compare", "--records", str(RECORDS), "--metric", metric, *COMPARED]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{metric} on test") and out.count("difference deepfm - ") == 6
    results = (REPO / "docs/results.md").read_text(encoding="utf-8")
    assert out in results, f"docs/results.md's {metric} tests differ from `deepfm report compare`"


def test_the_committed_figures_regenerate_from_the_records_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["figures", "--records", str(RECORDS), "--out", str(tmp_path)]) == 0
    committed = sorted(p.name for p in (REPO / "reports/figures").glob("*.png"))
    assert committed == sorted(p.name for p in tmp_path.glob("*.png"))
    for name in committed:
        drawn, kept = tmp_path / name, REPO / "reports/figures" / name
        assert drawn.read_bytes() == kept.read_bytes(), f"{name} differs from the records' figure"
