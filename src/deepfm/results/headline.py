"""`deepfm report sweep`: the documented headline sweep in one command (`make results`).

Every registered model x seeds 1-5 x both tie-breaks, each at its params.yaml defaults,
queued as DVC experiments, run with this machine's thread arithmetic, then exported as run
records, tabled and drawn. The thread arithmetic: each experiment runs params.yaml's
`train.num_threads` (so its bytes are those a plain `dvc repro` of that model and seed gives),
and as many run side by side as the cores hold (cores // threads, at least 1); OpenMP threads
of two runs on one core spin against each other, so the product never exceeds the cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from deepfm.results import ReportError
from deepfm.utils import available_cores

SEEDS = (1, 2, 3, 4, 5)
TIE_BREAKS = ("item_id", "random")


@dataclass(frozen=True)
class Plan:
    experiments: list[list[str]]  # one `dvc exp run --queue ...` argv per run
    jobs: int  # experiments side by side
    threads: int  # torch threads per experiment


def make_plan(
    models: list[str],
    seeds: list[int],
    tie_breaks: list[str],
    default_threads: int,
    threads: int | None = None,
    available: int | None = None,
) -> Plan:
    """The experiments to queue and how many run at once. `threads` other than params.yaml's
    is passed as `-S train.num_threads=` (its runs then reproduce themselves, not dvc.lock)."""
    threads = default_threads if threads is None else threads
    if threads < 1:
        raise ReportError(f"--threads is {threads}: give 1 or more torch threads per run")
    jobs = max(1, (available or available_cores()) // threads)
    extra = [] if threads == default_threads else ["-S", f"train.num_threads={threads}"]
    experiments = [
        ["dvc", "exp", "run", "--queue", "-S", f"model={m}", "-S", f"seed={s}",
         "-S", f"split.tie_break={t}", *extra]
        for t in tie_breaks for m in models for s in seeds
    ]  # fmt: skip
    return Plan(experiments, jobs, threads)


def _dvc(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ReportError(
            f"`dvc {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}; run "
            "this from the repository root with the venv active"
        )
    return proc.stdout


def wait_for_queue(
    status: Callable[[], str], poll_seconds: float = 15.0, sleep=time.sleep
) -> list[str]:
    """Polls `dvc queue status` until nothing is queued or running; returns the lines of
    failed tasks."""
    while True:
        lines = status().splitlines()
        active = [line for line in lines if line.split()[-1:] in (["Queued"], ["Running"])]
        if not active:
            return [line for line in lines if line.split()[-1:] == ["Failed"]]
        print(f"{len(active)} experiment(s) queued or running", file=sys.stderr, flush=True)
        sleep(poll_seconds)


def run_plan(plan: Plan, dvc: Callable[[list[str]], str] = _dvc, **wait) -> None:
    """Queues the plan's experiments, starts plan.jobs workers and waits for them."""
    for argv in plan.experiments:
        dvc(argv[1:])
    dvc(["queue", "start", "-j", str(plan.jobs)])
    failed = wait_for_queue(lambda: dvc(["queue", "status"]), **wait)
    if failed:
        raise ReportError(
            f"{len(failed)} experiment(s) failed (`dvc queue logs <task>` says why): "
            + "; ".join(failed)
        )
