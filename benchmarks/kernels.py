"""What the pinned kernels cost (deepfm.REPRODUCIBLE_KERNELS), by hand, on an idle machine:

    python benchmarks/kernels.py [--epochs 2] [--rounds 3]

Trains the default model on data/split (run `dvc repro split` first) for a few epochs in fresh
processes, alternating the pinned kernels with MKL's and ATen's own choice (round-robin, so a
drift of the machine's speed hits both alike), and prints the median seconds per epoch of
each and their ratio, and whether each setting gave the same weights in every round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# one training run in a child process: prints "<seconds per epoch> <weights sha256>"
CHILD = """
import hashlib, sys, time
from pathlib import Path
import torch, yaml
import deepfm
from deepfm.config import parse_config
from deepfm.data.splitting import read_split
from deepfm.training.loop import train
raw = yaml.safe_load(open("params.yaml"))
raw["train"].update(epochs=int(sys.argv[1]), min_epochs=int(sys.argv[1]), val_every=1000)
out = train(parse_config(raw), read_split(Path("data/split")), Path(sys.argv[2]), progress=False)
digest = hashlib.sha256()
for name, tensor in sorted(torch.load(sys.argv[2])["state_dict"].items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(sum(out.seconds_per_epoch) / len(out.seconds_per_epoch), digest.hexdigest()[:12])
"""


def run(pinned: bool, epochs: int, model_path: Path) -> tuple[float, str]:
    env = dict(os.environ)
    for name in ("MKL_CBWR", "ATEN_CPU_CAPABILITY"):
        env.pop(name, None)
    if not pinned:  # importing deepfm pins them only when unset: set the libraries' own
        # choice ("default" would mean ATen's unvectorised kernels; avx512 falls back to the
        # best the CPU has)
        env.update(MKL_CBWR="AUTO", ATEN_CPU_CAPABILITY="avx512")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(epochs), str(model_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds, digest = proc.stdout.split()[-2:]
    return float(seconds), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    digests: dict[bool, set[str]] = {True: set(), False: set()}
    for _ in range(args.rounds):
        for pinned in (True, False):
            seconds, digest = run(pinned, args.epochs, ROOT / "models" / ".kernels_bench.pt")
            times[pinned].append(seconds)
            digests[pinned].add(digest)
    (ROOT / "models" / ".kernels_bench.pt").unlink(missing_ok=True)
    for pinned, label in ((True, "pinned (AVX2, strict)"), (False, "libraries' own choice")):
        print(
            f"{label:>22}: {statistics.median(times[pinned]):.2f} s/epoch (median of "
            f"{args.rounds}), {len(digests[pinned])} distinct weights over the rounds"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"pinned / own choice: {ratio:.3f}")


if __name__ == "__main__":
    main()
