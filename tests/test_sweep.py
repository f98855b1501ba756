"""benchmarks/sweep.py's declared searches: the same budget for every model, drawn the same
way on every machine, and a resumed sweep that runs only what is missing."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from deepfm.config import parse_config
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("sweep", REPO / "benchmarks" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

CAUSAL = sorted((REPO / "benchmarks" / "grids" / "causal").glob("*.yaml"))


@pytest.mark.parametrize("grid", CAUSAL, ids=lambda p: p.stem)
def test_each_causal_grid_is_its_budget_of_distinct_valid_trials(grid):
    spec = yaml.safe_load(grid.read_text())
    trials = sweep.expand_grid(grid)
    assert len(trials) == spec["trials"] == (2 if spec["model"] == "itempop" else 20)
    assert len({sweep._key(t) for t in trials}) == len(trials)
    assert all(t["model"] == spec["model"] for t in trials)
    assert trials == sweep.expand_grid(grid)  # seeded: the same trials on every machine
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for t in trials:
        sweep.check_override(t, grid)
        parse_config(sweep.merge(base, t), require_all=True)  # every trial is a valid config


def test_a_declared_search_expands_joint_choices_and_includes_first(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(
        yaml.safe_dump({
            "model": "deepfm", "trials": 4, "seed": 3,
            "include": [{"train.epochs": 7}],
            "space": {
                "deepfm.dropout": [0.0, 0.5],
                "objective": [{"deepfm.loss": "bce"},
                              {"deepfm.loss": "bce_grouped", "deepfm.catalogue_weight": 0.5}],
            },
        })
    )  # fmt: skip
    trials = sweep.expand_grid(grid)
    assert trials[0] == {"train": {"epochs": 7}, "model": "deepfm"}
    drawn = trials[1:]
    assert len(drawn) == 3 and len({sweep._key(t) for t in drawn}) == 3
    for t in drawn:
        assert t["deepfm"]["dropout"] in (0.0, 0.5)
        assert t["deepfm"].get("catalogue_weight", 0.0) == (
            0.5 if t["deepfm"]["loss"] == "bce_grouped" else 0.0
        )
    grid.write_text(yaml.safe_dump({"model": "lr", "trials": 5, "space": {"seed": [1, 2]}}))
    with pytest.raises(SystemExit, match="5 trials asked for, the space holds 2"):
        sweep.expand_grid(grid)


def test_a_rerun_skips_the_trials_already_recorded(tmp_path, monkeypatch):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump([{"train": {"epochs": 1}}, {"train": {"epochs": 2}}]))
    ran = []

    def fake_trial(args):
        override, seed = args[0], args[1]
        ran.append((override["train"]["epochs"], seed))
        return {"override": override, "seed": seed, "best_epoch": 1, "seconds": 0.0,
                "val_full_ndcg@10_best": 0.1 * override["train"]["epochs"],
                "val_full_ndcg@10_final": 0.1 * override["train"]["epochs"],
                "val_hr@10_final": 0.2,
                "val_full_ndcg@10_last10": 0.1 * override["train"]["epochs"],
                "val_hr@10_last10": 0.2}  # fmt: skip

    class InlinePool:  # the trials in this process, so the fake is what runs
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def imap(self, fn, items):
            return map(fn, items)

    monkeypatch.setattr(sweep, "run_trial", fake_trial)
    monkeypatch.setattr(sweep.mp, "get_context", lambda *_: type("C", (), {"Pool": InlinePool}))
    out = tmp_path / "out"
    argv = ["sweep.py", str(grid), "--seeds", "1", "--out-dir", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    lines = out / "g.jsonl"
    out.mkdir()
    lines.write_text(json.dumps({"grid": "g", **fake_trial(({"train": {"epochs": 1}}, 1))}) + "\n")
    ran.clear()
    sweep.main()
    assert ran == [(2, 1)]  # the recorded trial is not run again
    assert [
        json.loads(x)["override"]["train"]["epochs"] for x in lines.read_text().splitlines()
    ] == [1, 2]
    monkeypatch.setattr("sys.argv", [*argv, "--summary"])
    ran.clear()
    sweep.main()
    assert ran == []
