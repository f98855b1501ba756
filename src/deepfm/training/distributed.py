"""Multi-process training with torch DDP: `train.processes: N` (the train stage launches
torchrun itself) or `torchrun --nproc_per_node=N src/stages/train.py ...` by hand. What each
rank draws, takes and saves, and what is exact: docs/performance.md, "Multi-process training
(DDP)". A lost rank makes the others fail within FAULT_TIMEOUT at the latest; rerunning
resumes from the last completed epoch. Gloo on the CPU, NCCL on CUDA; one machine only.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from deepfm.config import TrainConfig
from deepfm.training.device import threads_per_process
from deepfm.training.objectives import TrainingError
from deepfm.utils import physical_cores, rng_for

# How long a step's all-reduce waits for a rank that stopped answering (a hung process; a
# killed one is noticed at once, by gloo's closed connection and by torchrun).
FAULT_TIMEOUT = timedelta(seconds=60)
# How long the other ranks wait for rank 0 between epochs (its validation and saves). Long on
# purpose: a full-ranking validation of a large catalogue can take many minutes.
WAIT_TIMEOUT = timedelta(hours=24)
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def under_torchrun() -> bool:
    """Whether this process is a worker that torchrun (torch.distributed.run) started."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def is_main() -> bool:
    """Whether this process is rank 0 (or the only one): the one that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def check_supported(tc: TrainConfig, device: torch.device, world: int) -> None:
    """Refuse what several processes cannot train: sparse embedding gradients are all-reduced
    by gloo (the CPU) only; torch's NCCL sparse all-reduce needs the same rows on every rank."""
    if world > 1 and tc.sparse_embeddings and device.type == "cuda":
        raise TrainingError(
            f"params.yaml: 'train.sparse_embeddings' is true with train.processes={world} on "
            "CUDA: NCCL cannot all-reduce the ranks' row-sparse gradients. Set "
            "train.sparse_embeddings to false, or train on the CPU (gloo)."
        )


def local_rank() -> int | None:
    """This worker's index on its machine under torchrun, else None."""
    return int(os.environ["LOCAL_RANK"]) if under_torchrun() else None


def world_size(tc: TrainConfig) -> int:
    """How many processes train: WORLD_SIZE under torchrun, else 1. Under torchrun it must be
    train.processes (the param DVC records must describe the run)."""
    if not under_torchrun():
        if tc.processes > 1:
            raise TrainingError(
                f"params.yaml: 'train.processes' is {tc.processes}: training runs in that many "
                "processes under torchrun. Run the train stage (`dvc repro`, or python "
                "src/stages/train.py ...), which launches them, or torchrun "
                f"--nproc_per_node={tc.processes} src/stages/train.py ..."
            )
        return 1
    world = int(os.environ["WORLD_SIZE"])
    if world != tc.processes:
        raise TrainingError(
            f"torchrun started {world} processes but params.yaml 'train.processes' is "
            f"{tc.processes}: set -S train.processes={world}, or --nproc_per_node="
            f"{tc.processes}."
        )
    return world


@dataclass
class Shard:
    """This rank's contiguous part of every global batch: rows [lo, hi) of a batch of `rows`
    rows, lo = ceil(rank * rows / world). `rows` is set by data.batches.iterate_batches before
    each batch it yields."""

    rank: int
    world: int
    min_rows: int = 1  # the fewest rows a rank may get (2 when the model has BatchNorm)
    rows: int = 0

    def bounds(self, rows: int) -> tuple[int, int]:
        lo = -(-self.rank * rows // self.world)
        hi = -(-(self.rank + 1) * rows // self.world)
        return lo, hi

    def weight(self, n: int) -> float:
        """The factor on this rank's mean loss over its n rows that makes DDP's average of the
        ranks' gradients the gradient of the mean over the global batch: n * world / rows.
        Exactly 1.0 for one process."""
        return n * self.world / self.rows

    def check(self, examples: int, batch_size: int) -> None:
        """Refuse an epoch whose last batch would leave a rank too few rows (none, or one
        under BatchNorm), before the first step: every rank raises the same error."""
        last = examples - batch_size * ((examples - 1) // batch_size) if examples else 0
        fewest = min(last, batch_size) // self.world  # the last rank's part of the last batch
        if fewest >= self.min_rows:
            return
        usable = [
            b
            for b in range(batch_size - 1, max(batch_size - 200, 0), -1)
            if examples % b == 0 or examples % b >= self.world * self.min_rows
        ]
        hint = f" (e.g. {usable[0]})" if usable else ""
        need = "one row" if self.min_rows == 1 else f"{self.min_rows} rows (BatchNorm)"
        raise TrainingError(
            f"an epoch's {examples} examples in batches of train.batch_size={batch_size} end "
            f"in a batch of {last} rows, too few to give each of train.processes={self.world} "
            f"processes {need}: choose another train.batch_size{hint}."
        )


@dataclass
class Ranks:
    """This process's place in a DDP run (None everywhere when one process trains)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    steps: dist.ProcessGroup  # the per-step all-reduces, FAULT_TIMEOUT

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, objective, device: torch.device) -> Parallel:
        """The objective's loss as one DDP module (its forward is what DDP synchronises; SASRec's
        objective calls catalogue_logits, not forward) and this rank's Shard. Buffers are
        synced once, not at every forward: the feature tables are constant, and only rank
        0's BatchNorm statistics are ever saved."""
        ddp = nn.parallel.DistributedDataParallel
        # torch 2.13 renamed broadcast_buffers; a CUDA image may carry an older torch
        no_sync = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        module = ddp(
            _Loss(model, objective),
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=self.steps,
            **{"forward_sync_buffers" if no_sync else "broadcast_buffers": False},
        )
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return Parallel(module, Shard(self.rank, self.world, min_rows=2 if has_bn else 1), self)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Torch's global generator (dropout) gets a stream of its own per rank and epoch: the
        ranks' masks are independent, and a resumed run draws the same ones."""
        torch.manual_seed(int(rng_for(seed, "rank-dropout", epoch, self.rank).integers(2**63)))

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.steps)
        return t.tolist()

    def barrier(self) -> None:
        """Wait, up to WAIT_TIMEOUT, until every rank is here (after rank 0's saves)."""
        dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def share(self, obj):
        """Rank 0's object (e.g. the validation metrics) on every rank; the others wait here,
        up to WAIT_TIMEOUT, while rank 0 validates and saves."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def lost(self, error: BaseException) -> TrainingError:
        """The error a failed collective becomes: which rank saw it, and what to do."""
        first = (str(error).strip().splitlines() or [""])[0]
        return TrainingError(
            f"rank {self.rank} of {self.world}: lost the other training processes "
            f"({type(error).__name__}: {first[:300]}). Another rank died, was killed or hung "
            "(its own error, if it could say one, is above). The resume file keeps the last "
            "completed epoch: rerun the same command (dvc repro) to resume from it."
        )


@dataclass
class Parallel:
    """What train_steps needs to take a rank's part of each step (Ranks.wrap)."""

    module: nn.Module  # DDP(the objective's loss): forward(batch) -> (mean loss, rows)
    shard: Shard
    ranks: Ranks


class _Loss(nn.Module):
    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch):
        return self.objective.loss(self.model, batch)


@contextlib.contextmanager
def all_cores(ranks: Ranks | None, device: torch.device) -> Iterator[None]:
    """Rank 0 validates alone while the others wait: on the CPU it takes every core meanwhile."""
    if ranks is None or ranks.world == 1 or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, physical_cores()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_comm_error(error: BaseException) -> bool:
    """A failed collective: gloo / NCCL errors (torch.distributed.DistError) and the plain
    RuntimeErrors that gloo raises for a closed connection or a timeout."""
    if isinstance(error, TrainingError):  # ours: already says what happened
        return False
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "peer")
    )


def join(device: torch.device) -> Ranks:
    """Join the process group torchrun set up (env://): gloo on the CPU, NCCL on CUDA."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type not in ("cpu", "cuda"):
        raise TrainingError(
            f"multi-process training runs on the CPU (gloo) or CUDA (NCCL), not {device.type}: "
            "set train.device to cpu or cuda."
        )
    dist.init_process_group(backend, timeout=WAIT_TIMEOUT)
    steps = dist.new_group(backend=backend, timeout=FAULT_TIMEOUT)
    local = int(os.environ["LOCAL_RANK"])
    return Ranks(dist.get_rank(), dist.get_world_size(), local, device, steps)


def leave(ranks: Ranks | None) -> None:
    if ranks is not None and dist.is_initialized():
        dist.destroy_process_group()


def launch(tc: TrainConfig, script: Path, args: list[str]) -> None:
    """Run `script args` in train.processes processes under torchrun (--standalone: one
    machine, a free port), each with its share of the cores; return when all have finished.
    A failure of any of them is one TrainingError here (torchrun has stopped the others)."""
    n = tc.processes
    if tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available()):
        cores = physical_cores()
        if n > cores:
            raise TrainingError(
                f"params.yaml: 'train.processes' is {n} but this machine has {cores} physical "
                "cores: each process needs one. Lower train.processes."
            )
    elif tc.device == "cuda" and n > torch.cuda.device_count():
        raise TrainingError(
            f"params.yaml: 'train.processes' is {n} but {torch.cuda.device_count()} CUDA "
            "devices are visible: each process needs its own. Lower train.processes."
        )
    threads = threads_per_process(tc, n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={n}", str(script), *args,
    ]  # fmt: skip
    each = f"{threads} thread{'s' if threads > 1 else ''} each"
    print(f"train: {n} processes, {each} (torchrun, DDP)", flush=True)
    start = time.monotonic()
    code, interrupted = _wait(subprocess.Popen(command, env=env))
    if interrupted and code != 0:  # the ranks stopped between two batches: whole epochs saved
        raise KeyboardInterrupt
    if code != 0:
        raise TrainingError(
            f"train.processes={n}: a training process failed after "
            f"{time.monotonic() - start:.0f}s (torchrun exit code {code}; its report above "
            "names the rank and the cause). What finished is kept: the resume file holds the "
            "last completed epoch, and rerunning the same command (dvc repro) resumes from it."
        )


def _wait(process: subprocess.Popen) -> tuple[int, bool]:
    """Wait for torchrun; (its exit code, whether Ctrl-C or SIGTERM came meanwhile). Ctrl-C
    reaches torchrun and the workers by itself (one process group): wait for them to stop.
    A SIGTERM (dvc queue kill) is passed on to torchrun, which stops the workers: none is
    left running after this process."""
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        if signum == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)

    if threading.current_thread() is not threading.main_thread():
        return process.wait(), False
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait(), bool(stopped)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
