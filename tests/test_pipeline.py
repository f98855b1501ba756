"""Integration: the real `dvc repro` on real MovieLens-100K via the mirror, epochs cut to 1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.integration

KEEP = ["src", "params.yaml", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore", "pyproject.toml"]


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    mirror = Path(os.environ.get("MOVIELENS_MIRROR", SHARED_DATA))
    if not (mirror / "ml-100k.zip").is_file():
        pytest.skip(f"no ml-100k.zip in {mirror}; set MOVIELENS_MIRROR to run the real pipeline")
    work = tmp_path_factory.mktemp("repo")
    for name in KEEP:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy2(src, work / name)
    shutil.rmtree(work / ".dvc" / "tmp", ignore_errors=True)
    shutil.rmtree(work / ".dvc" / "cache", ignore_errors=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(epochs=1, min_epochs=1)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "MOVIELENS_MIRROR": str(mirror),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    _run(["git", "init", "-q"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "copy"],
        work,
        env,
    )
    first = _run(["dvc", "repro"], work, env)
    second = _run(["dvc", "repro"], work, env)
    return work, env, first, second


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
    assert set(ranks.num_candidates) >= {1000, 946, 998}  # users 405 and 655 have fewer


def test_deepfm_beats_random_by_a_wide_margin(pipeline):
    work, *_ = pipeline
    test = json.loads((work / "metrics/eval.json").read_text())["test"]
    # random ranking: sampled HR@10 = 0.01, full-ranking NDCG@10 about 0.003
    assert test["hr@10"] > 0.06
    assert test["full_ndcg@10"] > 0.02
    assert test["auc"] > 0.75
    assert test["ndcg@10"] <= test["hr@10"]


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


def _set_epochs(work: Path, epochs: int) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(epochs=epochs, min_epochs=epochs)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_interrupted_train_resumes_to_the_same_metrics_bytes(pipeline):
    work, env, *_ = pipeline
    _set_epochs(work, 3)  # a train stage DVC has never run: nothing to restore from run-cache
    state = work / "models/.train_state.pt"
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), "train never saved its per-epoch state"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the middle of epoch 2
    proc.communicate(timeout=120)
    assert state.exists()

    resumed = _run(["dvc", "repro"], work, env)
    assert "resuming after epoch" in resumed
    assert not state.exists()
    resumed_metrics = (work / "metrics/eval.json").read_bytes()
    resumed_lock = (work / "dvc.lock").read_text()

    for stage in ("train", "eval"):  # the same two stages again, uninterrupted, from scratch
        _run(["dvc", "repro", "--single-item", "--force", "--no-run-cache", stage], work, env)
    assert (work / "metrics/eval.json").read_bytes() == resumed_metrics
    assert (work / "dvc.lock").read_text() == resumed_lock
