"""Integration: a Ctrl-C'd `dvc repro` of the real pipeline (real MovieLens-100K via the
mirror, 3 epochs) resumes to the bytes an uninterrupted run gives.

A module of its own, on a fresh copy: it needs the data stages but no trained model, so under
`pytest -n 2` (make test) it starts at once on one worker while the other builds
tests/test_pipeline.py's pipeline (tests/conftest.py). No wall-clock limits: every wait ends
when the process it waits on ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_pipeline import _run, copy_repo

pytestmark = pytest.mark.integration


def _set_epochs(work: Path, epochs: int) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(epochs=epochs, min_epochs=epochs)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _where_runs_parted(hashes: Path) -> str:
    """From tests/diagnostics' per-step parameter hashes of the three train runs (interrupted,
    resumed, uninterrupted), in start order: the first step at which each part differs."""
    runs = [json.loads(p.read_text())["hashes"] for p in sorted(hashes.glob("*.json"))]
    if len(runs) != 3:
        return f"(expected 3 train runs' step hashes in {hashes}, found {len(runs)})"
    interrupted, resumed, whole = runs
    head, tail = whole[: len(interrupted)], whole[len(whole) - len(resumed) :]

    def first_difference(a: list[str], b: list[str]) -> str:
        step = next((i + 1 for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        return "none" if step is None else f"step {step}"

    return (
        f"{len(whole)} steps uninterrupted; the interrupted run's {len(interrupted)} steps first "
        f"differ at: {first_difference(interrupted, head)}; the resumed run's {len(resumed)} "
        f"steps first differ at: {first_difference(resumed, tail)} (of its own)"
    )


def test_interrupted_train_resumes_to_the_same_metrics_bytes(mirror, tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    env = copy_repo(work, epochs=2, extra_env={"MOVIELENS_MIRROR": str(mirror)})
    _set_epochs(work, 3)  # a train stage DVC has never run: nothing to restore from run-cache
    hashes = work.parent / f"step-hashes-{time.time_ns()}"
    hashes.mkdir()
    diagnostics = str(REPO / "tests" / "diagnostics")
    env = {**env, "PYTHONPATH": env["PYTHONPATH"] + os.pathsep + diagnostics}
    env["DEEPFM_STEP_HASHES"] = str(hashes)
    state = work / "models/.train_state.pt"
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    while not state.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert state.exists(), "train never saved its per-epoch state"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the middle of epoch 2
    proc.communicate()
    assert state.exists()

    resumed = _run(["dvc", "repro"], work, env)
    assert "resuming after epoch" in resumed
    assert not state.exists()
    resumed_metrics = (work / "metrics/eval.json").read_bytes()
    resumed_lock = (work / "dvc.lock").read_text()

    for stage in ("train", "eval"):  # the same two stages again, uninterrupted, from scratch
        _run(["dvc", "repro", "--single-item", "--force", "--no-run-cache", stage], work, env)
    assert len(list(hashes.glob("*.json"))) == 3, "tests/diagnostics did not hash the train runs"
    parted = _where_runs_parted(hashes)
    assert (work / "metrics/eval.json").read_bytes() == resumed_metrics, parted
    assert (work / "dvc.lock").read_text() == resumed_lock, parted
