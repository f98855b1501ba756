"""Integration: the real `dvc repro` on real MovieLens-100K via the mirror, epochs cut to 2.

The pipeline is built once (`pipeline`) for the tests that only read it; a test that changes
the workspace (experiments, a remote) works on its own copy of the built one (`workspace_copy`),
so it reruns only the stages its change touches. Under `pytest -n 2` (make test) this module is
handed to one worker whole (tests/conftest.py): the pipeline is built once. The resume test is
tests/test_pipeline_resume.py, on the other worker meanwhile.

No wall-clock limits: a slow or loaded machine makes these tests slow, never wrong. Every
wait ends when the process it waits on ends.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, user_environ

pytestmark = pytest.mark.integration

KEEP = ["src", "params.yaml", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore", "pyproject.toml"]


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def copy_repo(work: Path, epochs: int, extra_env: dict | None = None) -> dict:
    """This checkout's code and params, without data or DVC cache, as a fresh git repository
    in `work`, with `epochs` training epochs; returns the environment to run DVC in."""
    for name in KEEP:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy2(src, work / name)
    shutil.rmtree(work / ".dvc" / "tmp", ignore_errors=True)
    shutil.rmtree(work / ".dvc" / "cache", ignore_errors=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(epochs=epochs, min_epochs=epochs)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **user_environ(),
        **(extra_env or {}),
        # the copy's own code, ahead of the editable install (which points at this checkout)
        "PYTHONPATH": str(work / "src"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    _run(["git", "init", "-q"], work, env)
    for key, value in (("user.name", "ci"), ("user.email", "ci@localhost")):  # dvc exp commits
        _run(["git", "config", key, value], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "copy"], work, env)
    return env


def copy_repo_declaring(work: Path, epochs: int, name: str, declaration: dict) -> dict:
    """copy_repo, with `declaration` added to params.yaml's datasets as `name` (committed)."""
    env = copy_repo(work, epochs)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"][name] = declaration
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-qam", f"declare {name}"], work, env)
    return env


@pytest.fixture(scope="session")
def pipeline(mirror, tmp_path_factory):
    """The real `dvc repro`, 2 epochs, in a fresh copy, then a second `dvc repro`: built once
    per session (per xdist worker; this module runs on one). Read it; change a copy."""
    work = tmp_path_factory.mktemp("repo")
    env = copy_repo(work, epochs=2, extra_env={"MOVIELENS_MIRROR": str(mirror)})
    first = _run(["dvc", "repro"], work, env)
    second = _run(["dvc", "repro"], work, env)
    return work, env, first, second


def workspace_copy(pipeline, dest: Path) -> tuple[Path, dict]:
    """A copy of the built workspace at `dest`: its git repository, outputs, DVC cache and
    run-cache (not .dvc/tmp); returns it with the environment to run DVC in it."""
    work, env, *_ = pipeline
    shutil.copytree(
        work, dest, symlinks=True, ignore=lambda d, _: ["tmp"] if d.endswith(".dvc") else []
    )
    return dest, {**env, "PYTHONPATH": str(dest / "src")}


def test_metrics_file_is_complete(pipeline):
    work, *_ = pipeline
    metrics = json.loads((work / "metrics/eval.json").read_text())
    expected = {f"{m}@{k}" for m in ("hr", "ndcg", "full_hr", "full_ndcg") for k in (5, 10, 20)}
    expected |= {"mrr", "full_mrr", "auc", "logloss", "users"}
    for split in ("val", "test"):
        assert expected <= set(metrics[split]), expected - set(metrics[split])
        assert metrics[split]["users"] == 942  # user 685 has no rating >= 4
    assert metrics["environment"]["torch"]
    ranks = pd.read_parquet(work / "metrics/eval_ranks.parquet")
    assert len(ranks) == 2 * 942
    # the causal cut leaves every user 999 items unrated before each held-out item (under
    # `cut: none` users 405 and 655 had 945 and 997)
    assert set(ranks.num_candidates) == {1000}
    summary = json.loads((work / "data/split/summary.json").read_text())
    assert summary["cut"] == "causal"
    assert (summary["rows_between_validation_and_test"], summary["rows_after_test"]) == (1406, 2129)


# ItemPop on this split (no training; measured with the default params, the causal cut): the
# floor the default model must clear by a margin, on both held-out splits.
ITEMPOP = {  # params.yaml's ItemPop (count: positives) on the default split, seed 42
    "test": {"full_ndcg@10": 0.0352, "hr@10": 0.0924, "auc": 0.7920},
    "val": {"full_ndcg@10": 0.0385, "hr@10": 0.0977, "auc": 0.8185},
}


@pytest.mark.parametrize("split", ["val", "test"])
def test_default_model_clears_itempop(pipeline, split):
    work, *_ = pipeline
    got = json.loads((work / "metrics/eval.json").read_text())[split]
    floor = ITEMPOP[split]
    assert got["full_ndcg@10"] > floor["full_ndcg@10"] + 0.015
    assert got["hr@10"] > floor["hr@10"] + 0.05
    assert got["auc"] > floor["auc"] + 0.05
    assert got["ndcg@10"] <= got["hr@10"] and got["full_ndcg@10"] <= got["full_hr@10"]


def test_second_repro_does_nothing(pipeline):
    *_, second = pipeline
    assert "Running stage" not in second
    assert "up to date" in second.lower()


def test_train_curves_and_plots(pipeline):
    work, env, *_ = pipeline
    live = json.loads((work / "metrics/train/metrics.json").read_text())
    assert {"train", "val", "step"} <= set(live)
    assert (work / "metrics/train/plots/metrics/val/full_ndcg@10.tsv").is_file()
    shown = _run(["dvc", "metrics", "show", "--json"], work, env)
    assert "full_ndcg@10" in shown


def test_the_deepfm_command_on_the_pipelines_outputs(pipeline, tmp_path):
    """From a fresh clone after `dvc repro`: `deepfm evaluate` gives metrics/eval.json's bytes,
    `deepfm recommend` ten items user 42 has not rated, with their titles."""
    work, env, *_ = pipeline
    deepfm = [sys.executable, "-m", "deepfm"]
    _run([*deepfm, "evaluate", "--out", str(tmp_path / "e.json")], work, env)
    assert (tmp_path / "e.json").read_bytes() == (work / "metrics/eval.json").read_bytes()
    out = _run([*deepfm, "recommend", "--user", "42", "-k", "10", "--format", "csv"], work, env)
    top = pd.read_csv(io.StringIO(out))
    interactions = pd.read_parquet(work / "data/processed/interactions.parquet")
    rated = set(interactions.item_id[interactions.user_id == 42])
    assert len(top) == 10 and len(rated) > 100 and not set(top.item_id) & rated
    titles = pd.read_parquet(work / "data/processed/items.parquet").set_index("item_id").title
    assert top.title.tolist() == titles[top.item_id].tolist()
    assert top.score.is_monotonic_decreasing
    info = json.loads(_run([*deepfm, "info", "--json"], work, env))
    assert info["data"]["split"]["matches"] and info["metrics"]["of_this_checkpoint"]


def test_experiments_and_the_report_through_real_dvc(pipeline, tmp_path):
    """`dvc exp run`, then the report's `table` and `compare` on what the real `dvc exp show`
    and dvc.api give: the default model against ItemPop, with the paired test."""
    work, env = workspace_copy(pipeline, tmp_path / "repo")
    _run(["dvc", "exp", "run", "-n", "default"], work, env)
    _run(["dvc", "exp", "run", "-n", "pop", "-S", "model=itempop"], work, env)
    table = _run([sys.executable, "-m", "deepfm", "report", "table", "--out", ""], work, env)
    rows = {
        line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")
    }
    assert {"deepfm", "itempop"} <= set(rows), table
    compare = _run(
        [
            sys.executable,
            "-m",
            "deepfm",
            "report",
            "compare",
            "deepfm",
            "itempop",
            "--resamples",
            "2000",
        ],
        work,
        env,
    )
    assert "full_ndcg@10 on test, 942 users" in compare
    means = {
        line.split(":")[0].strip(): float(line.split(":")[1].split()[0])
        for line in compare.splitlines()
        if line.strip().startswith(("deepfm:", "itempop:"))
    }
    assert means["itempop"] == pytest.approx(ITEMPOP["test"]["full_ndcg@10"], abs=5e-5)
    assert means["deepfm"] > means["itempop"] + 0.015
    assert "-> significant at alpha = 0.05" in compare


def _remote_hashes(remote: Path) -> set[str]:
    """The md5s a DVC 3 remote holds (files/md5/ab/cdef... -> abcdef..., .dir dropped)."""
    return {
        p.parent.name + p.name.removesuffix(".dir")
        for p in (remote / "files" / "md5").glob("*/*")
        if p.is_file()
    }


def test_dvc_push_and_pull_round_trip_keeps_movielens_home(pipeline, tmp_path):
    """A local DVC remote: `dvc push` sends the model and the per-user ranks, and nothing of
    MovieLens (data/raw, data/processed, data/split are `push: false`: the licence forbids
    redistribution); a fresh copy of the repository pulls the model back byte for byte."""
    work, env = workspace_copy(pipeline, tmp_path / "repo")
    remote = tmp_path / "remote"
    _run(["dvc", "remote", "add", "--local", "-f", "-d", "team", str(remote)], work, env)
    _run(["dvc", "push"], work, env)
    pushed = _remote_hashes(remote)
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    md5 = {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", [])}
    assert md5["models/model.pt"] in pushed
    assert md5["metrics/eval_ranks.parquet"] in pushed
    cache = work / ".dvc" / "cache" / "files" / "md5"
    for stage in ("data/raw", "data/processed", "data/split"):
        tree = md5[stage]  # a directory: its manifest lists its files
        assert tree.endswith(".dir") and tree.removesuffix(".dir") not in pushed, stage
        files = json.loads((cache / tree[:2] / tree[2:]).read_text())
        assert files and not {f["md5"] for f in files} & pushed, stage

    clone = tmp_path / "clone"
    shutil.copytree(
        work, clone, ignore=shutil.ignore_patterns("cache", "tmp", "data", "models", "*.parquet")
    )
    assert not (clone / "models").exists()
    _run(["dvc", "pull", "models/model.pt", "metrics/eval_ranks.parquet"], clone, env)
    for name in ("models/model.pt", "metrics/eval_ranks.parquet"):
        assert (clone / name).read_bytes() == (work / name).read_bytes(), name
    assert not (clone / "data").exists()  # nothing of MovieLens came back either
