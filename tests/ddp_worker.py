"""One rank of the multi-process training tests (tests/test_distributed.py), started by
torchrun through training.distributed.launch: `ddp_worker.py SPEC.json`.

SPEC: {"params": {...}, "split": DIR, "model": PATH, "resume": PATH | null, "rows": PATH,
"kill": [rank, epoch] or [rank, epoch, signal name] | null}. Every rank trains on the split
with those params; rank 0 writes the rows it logged (a Recorder, as in test_training.py) to
"rows". With "kill", that rank sends itself SIGKILL (or the signal named, e.g. SIGSTOP: a hung
process) after the first step of that epoch: a process lost mid-epoch.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from conftest import Recorder  # tests/ is this script's folder: sys.path[0]


def main(spec_path: str) -> None:
    from deepfm.config import parse_config
    from deepfm.data.splitting import read_split
    from deepfm.training import objectives
    from deepfm.training.loop import train

    spec = json.loads(Path(spec_path).read_text())
    kill = spec.get("kill")
    if kill is not None and int(os.environ["RANK"]) == kill[0]:
        real = objectives.Pointwise.batches

        def batches(self, epoch, *args):
            for i, batch in enumerate(real(self, epoch, *args)):
                if epoch == kill[1] and i == 1:
                    os.kill(os.getpid(), getattr(signal, kill[2] if len(kill) > 2 else "SIGKILL"))
                yield batch

        objectives.Pointwise.batches = batches
    live = Recorder()
    resume = Path(spec["resume"]) if spec.get("resume") else None
    cfg = parse_config(spec["params"])
    out = train(
        cfg, read_split(spec["split"]), Path(spec["model"]), live=live, progress=False,
        resume_path=resume,
    )  # fmt: skip
    if int(os.environ["RANK"]) == 0:
        result = {"rows": live.rows, "epochs_run": out.epochs_run, "threads": out.num_threads}
        Path(spec["rows"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
