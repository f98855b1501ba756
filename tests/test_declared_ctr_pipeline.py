"""Integration: a synthetic file in the Criteo Kaggle format, declared in params.yaml as a
`criteo` dataset, runs through the real `dvc exp run -S dataset=...` under the click-log (ctr)
protocol; DeepFM beats logistic regression on the interaction it plants, and the report reads
the runs. (A module of its own, so that `pytest -n 2` can run it beside
tests/test_declared_pipeline.py: tests/conftest.py.)"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import criteo_declaration, make_criteo_file
from tests.test_pipeline import _run, copy_repo_declaring

pytestmark = pytest.mark.integration


CTR_ARGS = [
    "-S", "train.monitor=auc", "-S", "train.batch_size=256", "-S", "train.val_every=2",
    "-S", "deepfm.recent_items=0", "-S", "deepfm.history_pooling=mean",
]  # fmt: skip


@pytest.fixture(scope="module")
def criteo_repo(tmp_path_factory):
    """A synthetic file in the Criteo Kaggle format, declared as a `criteo` dataset."""
    log = make_criteo_file(tmp_path_factory.mktemp("clicks") / "train.txt")
    work = tmp_path_factory.mktemp("repo")
    env = copy_repo_declaring(work, 6, "clicks", criteo_declaration(log))
    runs = {}
    for model in ("deepfm", "lr"):
        _run(["dvc", "exp", "run", "-S", "dataset=clicks", "-S", f"model={model}", *CTR_ARGS],
             work, env)  # fmt: skip
        metrics = json.loads((work / "metrics/eval.json").read_text())
        rows = pd.read_parquet(work / "metrics/eval_ranks.parquet")
        runs[model] = (metrics, rows)
    return runs, work, env


def test_the_ctr_protocol_runs_through_dvc_and_deepfm_beats_lr(criteo_repo):
    runs, *_ = criteo_repo
    deepfm, lr = runs["deepfm"][0], runs["lr"][0]
    assert deepfm["test"]["rows"] == 2000 and deepfm["val"]["rows"] == 2000
    assert deepfm["test"]["auc"] > lr["test"]["auc"] + 0.2, (deepfm["test"], lr["test"])
    assert deepfm["test"]["logloss"] < lr["test"]["logloss"]


@pytest.mark.parametrize("model", ["deepfm", "lr"])
def test_ctr_auc_equals_scikit_learns_on_the_same_scores(criteo_repo, model):
    metrics, rows = criteo_repo[0][model]
    test = rows[rows["split"] == "test"]
    assert len(test) == 2000
    assert metrics["test"]["auc"] == pytest.approx(roc_auc_score(test["label"], test["logit"]),
                                                   abs=5e-7)  # fmt: skip


def test_the_report_tables_and_compares_ctr_runs(criteo_repo):
    _, work, env = criteo_repo
    table = _run([sys.executable, "-m", "deepfm", "report", "table", "--out", ""], work, env)
    assert "AUC" in table and "LogLoss" in table
    rows = [line for line in table.splitlines() if line.startswith(("| deepfm", "| lr"))]
    assert len(rows) == 2, table
    compare = _run(
        [sys.executable, "-m", "deepfm", "report", "compare", "deepfm", "lr", "--resamples", "300"],
        work,
        env,
    )
    assert "auc on test, 2,000 rows (ctr protocol)" in compare
    assert "-> significant: the CI excludes 0" in compare
