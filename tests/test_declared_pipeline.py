"""Integration: a dataset that no MovieLens code knows, declared in params.yaml only, runs
end to end through the real `dvc exp run -S dataset=...`, and a trained model beats item
popularity on it (the synthetic signal is built so that popularity cannot find it).
The click-log (ctr) protocol's twin: tests/test_declared_ctr_pipeline.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_synthetic_ratings, synthetic_declaration
from tests.test_pipeline import _run, copy_repo_declaring

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synthetic_repo(tmp_path_factory):
    csv = make_synthetic_ratings(tmp_path_factory.mktemp("mine") / "ratings.csv")
    work = tmp_path_factory.mktemp("repo")
    env = copy_repo_declaring(work, 10, "synth", synthetic_declaration(csv))  # params only
    runs = {}
    for model in ("deepfm", "itempop"):
        log = _run(["dvc", "exp", "run", "-S", "dataset=synth", "-S", f"model={model}"], work, env)
        runs[model] = (json.loads((work / "metrics/eval.json").read_text()), log)
    return work, runs


def test_the_declared_dataset_runs_through_every_stage(synthetic_repo):
    work, runs = synthetic_repo
    metrics, log = runs["deepfm"]
    for stage in ("fetch", "preprocess", "split", "train", "eval"):
        assert f"Running stage '{stage}'" in log, stage
    assert "preprocess: 12,000 interactions" in log
    schema = json.loads((work / "data/split/schema.json").read_text())
    kinds = {f["name"]: (f["source"], f["kind"]) for f in schema["fields"]}
    assert kinds == {
        "user_id": ("user", "sparse"), "age": ("user", "dense"), "device": ("context", "sparse"),
        "history": ("user", "sequence"), "item_id": ("item", "sparse"),
        "category": ("item", "sparse"), "tags": ("item", "sequence"),
    }  # fmt: skip
    assert metrics["test"]["users"] == 300 and metrics["model"] == "deepfm"
    _, pop_log = runs["itempop"]
    assert "Running stage 'split'" not in pop_log  # same data: only train and eval rerun


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_trained_model_beats_item_popularity_on_it(synthetic_repo, split):
    _, runs = synthetic_repo
    deepfm, itempop = runs["deepfm"][0][split], runs["itempop"][0][split]
    # ~200 items, 40 per category: popularity ranks the liked category no better than chance
    assert deepfm["full_ndcg@10"] > itempop["full_ndcg@10"] + 0.05, (deepfm, itempop)
    assert deepfm["auc"] > itempop["auc"] + 0.1
    assert deepfm["auc"] > 0.8
