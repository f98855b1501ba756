"""`deepfm report sweep` (make results): the plan, the thread arithmetic and the wait."""

from __future__ import annotations

import pytest

from deepfm.config import MODEL_SECTIONS
from deepfm.results import ReportError, cli
from deepfm.results.headline import make_plan, run_plan, wait_for_queue


def test_the_plan_is_every_model_seed_and_tie_break_at_the_params_threads():
    plan = make_plan(["deepfm", "ease"], [1, 2], ["item_id", "random"], default_threads=2,
                     available=2)  # fmt: skip
    assert (plan.jobs, plan.threads, len(plan.experiments)) == (1, 2, 8)
    assert plan.experiments[0] == ["dvc", "exp", "run", "--queue", "-S", "model=deepfm",
                                   "-S", "seed=1", "-S", "split.tie_break=item_id"]  # fmt: skip
    assert plan.experiments[-1][-2:] == ["-S", "split.tie_break=random"]
    assert make_plan(["lr"], [1], ["item_id"], 2, available=16).jobs == 8
    assert make_plan(["lr"], [1], ["item_id"], 2, available=1).jobs == 1  # never zero
    one = make_plan(["lr"], [1], ["item_id"], 2, threads=1, available=2)
    assert one.jobs == 2 and one.experiments[0][-2:] == ["-S", "train.num_threads=1"]
    with pytest.raises(ReportError, match="--threads is 0"):
        make_plan(["lr"], [1], ["item_id"], 2, threads=0)


def test_the_wait_polls_until_nothing_is_queued_or_running_and_names_failures():
    screens = iter([
        "Task     Name    Created    Status\na1 x 04:01 PM   Running\nb2 y 04:01 PM   Queued\n",
        "Task     Name    Created    Status\na1 x 04:01 PM   Success\nb2 y 04:01 PM   Running\n",
        "Task     Name    Created    Status\na1 x 04:01 PM   Success\nb2 y 04:01 PM   Failed\n"
        "\nWorker status: 0 active, 0 idle\n",
    ])  # fmt: skip
    naps = []
    failed = wait_for_queue(lambda: next(screens), poll_seconds=7, sleep=naps.append)
    assert naps == [7, 7] and failed == ["b2 y 04:01 PM   Failed"]


def test_running_the_plan_queues_starts_and_reports_failed_runs():
    calls = []

    def dvc(args):
        calls.append(args)
        return "c3 z 04:01 PM   Failed\n" if args == ["queue", "status"] else ""

    plan = make_plan(["lr"], [1, 2], ["item_id"], 2, available=4)
    with pytest.raises(ReportError, match=r"1 experiment\(s\) failed .*c3 z"):
        run_plan(plan, dvc=dvc, sleep=lambda s: None)
    assert calls[:2] == [e[1:] for e in plan.experiments]
    assert calls[2] == ["queue", "start", "-j", "2"]


def test_the_dry_run_prints_the_plan_and_queues_nothing(capsys, monkeypatch):
    monkeypatch.setattr("deepfm.results.headline._dvc", lambda a: pytest.fail(f"ran dvc {a}"))
    assert cli.main(["sweep", "--dry-run", "--seeds", "1", "--tie-breaks", "item_id"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(MODEL_SECTIONS) + 1 and lines[-1].startswith("dvc queue start -j ")
    assert err.startswith(f"{len(MODEL_SECTIONS)} experiments, ")
    assert cli.main(["sweep", "--dry-run", "--models", "nope"]) == 1
    assert "unknown model(s) ['nope']" in capsys.readouterr().err
