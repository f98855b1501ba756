"""The bugs that would silently change our numbers, each applied alone to a fresh clone: the
test suite must fail on every one. Run by hand (about 5-15 minutes on 2 cores):

    python benchmarks/known_mutations.py [--only NAME ...] [--keep]

For each mutation: `git clone` of the committed HEAD into a temporary folder, one exact text
replacement (which must match once), then the suite `make test` runs, with this checkout's
venv: the unit tests first (-x stops at the first failure), and the real-pipeline integration
tests only when every unit test passed. A mutation that no test catches is printed as
SURVIVED and the script exits 1. Uncommitted changes are not part of the clone: commit first.

The list is the one the test audit of issue 12 found surviving, plus the dvc.yaml deps
check; a new reported-number bug that a test should catch belongs here too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation(
        "full ranking keeps the train items",
        "src/deepfm/evaluation/ranking.py",
        "        keep[torch.from_numpy(r_rows), torch.from_numpy(r_cols)] = False\n",
        "",
    ),
    Mutation(
        "test ranking keeps the validation item",
        "src/deepfm/evaluation/ranking.py",
        'exclude = {"val": None, "test": rated_before}',
        'exclude = {"val": None, "test": None}',
    ),
    Mutation(
        "sampled rank counts padding slots",
        "src/deepfm/evaluation/ranking.py",
        "M.pessimistic_rank(pos_scores, cand_scores, valid)",
        "M.pessimistic_rank(pos_scores, cand_scores)",
    ),
    Mutation(
        "validation / test users check removed",
        "src/deepfm/evaluation/ranking.py",
        "    if not np.array_equal(split.val.users, split.test.users):\n",
        "    if False:\n",
    ),
    Mutation(
        "negatives carry the history of the wrong positive",
        "src/deepfm/data/batches.py",
        "np.repeat(pos_rows, negatives_per_positive)",
        "np.tile(pos_rows, negatives_per_positive)",
    ),
    Mutation(
        "attention softmax over the wrong axis",
        "src/deepfm/models/layers/attention.py",
        "torch.softmax(scores, dim=-2)",
        "torch.softmax(scores, dim=-1)",
    ),
    Mutation(
        "train.amp ignored",
        "src/deepfm/training/loop.py",
        "torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp)",
        "torch.autocast(device_type, dtype=torch.bfloat16, enabled=False)",
    ),
    Mutation(
        "resume file of other params used anyway",
        "src/deepfm/training/resume.py",
        '        if saved.get("fingerprint") == fingerprint:\n',
        "        if True:\n",
    ),
    Mutation(
        "corrupt resume file silently ignored",
        "src/deepfm/training/resume.py",
        "    except Exception as e:\n        why = ",
        "    except Exception as e:\n        return None\n        why = ",
    ),
    Mutation(
        "genre flags decoded one column off",
        "src/deepfm/data/movielens.py",
        "genre_names = np.array(ML100K_GENRES, dtype=object)",
        "genre_names = np.array(ML100K_GENRES[1:] + ML100K_GENRES[:1], dtype=object)",
    ),
    Mutation(
        "ItemPop smoothing with the wrong user count",
        "src/deepfm/models/itempop.py",
        "n = len(np.unique(split.train_users))",
        "n = self.schema.num_users",
    ),
    Mutation(
        "report: duplicate-user guard removed",
        "src/deepfm/results/statistics.py",
        '    if part["user_id"].duplicated().any():\n',
        "    if False:\n",
    ),
    Mutation(
        "report: NaN guard removed",
        "src/deepfm/results/statistics.py",
        "    if not (np.isfinite(a).all() and np.isfinite(b).all()):\n",
        "    if False:\n",
    ),
    Mutation(
        "a stage's dvc.yaml deps miss config.py",
        "dvc.yaml",
        "      - src/stages/fetch.py\n      - src/deepfm/__init__.py\n"
        "      - src/deepfm/data/__init__.py\n      - src/deepfm/config.py\n",
        "      - src/stages/fetch.py\n      - src/deepfm/__init__.py\n"
        "      - src/deepfm/data/__init__.py\n",
    ),
]


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[bool, str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


def check(m: Mutation, python: str, keep: bool) -> tuple[bool, str, float]:
    """(caught, the first failing test or why not, seconds)."""
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mutation-"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    ok, out = run(["git", "clone", "-q", str(ROOT), str(work / "repo")], work, env)
    repo = work / "repo"
    if not ok:
        raise SystemExit(f"git clone failed: {out}")
    target = repo / m.path
    text = target.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(
            f"{m.name}: the text to replace occurs {text.count(m.old)} times in {m.path} "
            "(must be once); update the mutation to the current code"
        )
    target.write_text(text.replace(m.old, m.new))
    pytest = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    passed, out = run([*pytest, "-m", "not integration"], repo, env)
    if passed:
        passed, out = run([*pytest, "-m", "integration"], repo, env)
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if not keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    why = failed[0] if failed else ("no test failed" if passed else out.strip()[-300:])
    return not passed, why, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=[], help="substrings of mutation names")
    ap.add_argument("--keep", action="store_true", help="keep the mutated clones (printed)")
    args = ap.parse_args()
    python = str(ROOT / ".venv" / "bin" / "python")
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    survived = 0
    for m in chosen:
        caught, why, seconds = check(m, python, args.keep)
        survived += not caught
        print(f"{'caught  ' if caught else 'SURVIVED'}  {seconds:6.1f} s  {m.name}\n    {why}")
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
