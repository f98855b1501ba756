"""Shared fixtures: small synthetic MovieLens data in the real file formats."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

# `make test` runs pytest -n 2 (pytest-xdist): two worker processes on this 2-core machine.
# Each worker runs its tests on one torch thread, set here before torch is first imported.
# The real pipeline's stages still train on params.yaml's train.num_threads (2): they set it
# themselves, and tests/test_pipeline.py hands them the environment without these two.
# OpenMP threads that wait for work sleep instead of spinning (the same bits, checked), so
# a stage's 2 threads do not spin against the other worker's tests (3x slower if they do).
WORKER_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
USER_THREADS = {name: os.environ.get(name) for name in WORKER_THREADS}  # before the line below
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.update(WORKER_THREADS)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import deepfm  # noqa: E402, F401  (first: it pins the kernels before any test runs torch)

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def user_environ() -> dict[str, str]:
    """os.environ with the thread settings the user had, not a worker's one thread: for the
    real pipeline's processes, which must compute what `dvc repro` computes outside pytest."""
    env = dict(os.environ)
    for name, value in USER_THREADS.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


def declared_fields(dataset: str = "ml-100k") -> tuple:
    """The fields params.yaml declares for `dataset`: tests split what the pipeline splits."""
    from deepfm.config import load_config

    return load_config(REPO / "params.yaml").datasets[dataset].fields


ML_FIELDS = declared_fields()
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip


def make_ml100k_files(folder: Path, n_users=40, n_items=60, per_user=(8, 25), seed=0) -> Path:
    """Write u.data / u.user / u.item (and the small side files) in ML-100K's format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for u in range(1, n_users + 1):
        k = int(rng.integers(per_user[0], per_user[1] + 1))
        items = rng.choice(np.arange(1, n_items + 1), size=k, replace=False)
        for it in items:
            rows.append((u, int(it), int(rng.integers(1, 6)), int(rng.integers(8.7e8, 8.9e8))))
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    occupations = ["technician", "other", "writer", "student", "engineer"]
    zips = ["85711", "94043", "T8H1N", "01002", "55105"]
    (folder / "u.user").write_text(
        "".join(
            f"{u}|{int(rng.integers(7, 74))}|{'MF'[u % 2]}|{occupations[u % 5]}|{zips[u % 5]}\n"
            for u in range(1, n_users + 1)
        )
    )
    lines = []
    for i in range(1, n_items + 1):
        flags = (rng.random(19) < 0.15).astype(int)
        date = "" if i == 7 else f"01-Jan-{1930 + (i * 7) % 68}"
        title = f"Movie {i} ({date[-4:] or 'unknown'})" if i != 3 else "Café Noir (1995)"
        lines.append(f"{i}|{title}|{date}||http://x|" + "|".join(map(str, flags)) + "\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    for name in ("README", "u.genre", "u.info", "u.occupation"):
        (folder / name).write_text(f"synthetic {name}\n")
    return folder


def make_ml1m_files(folder: Path, n_users=30, n_items=40, seed=0) -> Path:
    """ratings.dat / users.dat / movies.dat in ML-1M's '::' format (latin-1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for u in range(1, n_users + 1):
        for it in rng.choice(
            np.arange(1, n_items + 1), size=int(rng.integers(6, 20)), replace=False
        ):
            rows.append(f"{u}::{it}::{int(rng.integers(1, 6))}::{int(rng.integers(9.5e8, 1e9))}\n")
    (folder / "ratings.dat").write_text("".join(rows))
    ages = [1, 18, 25, 35, 45, 50, 56]
    (folder / "users.dat").write_text(
        "".join(
            f"{u}::{'MF'[u % 2]}::{ages[u % 7]}::{u % 21}::{48067 + u}\n"
            for u in range(1, n_users + 1)
        )
    )
    (folder / "movies.dat").write_bytes(
        "".join(
            f"{i}::Film {i} ({1950 + i})::{'Action|Comedy' if i % 2 else 'Drama'}\n"
            for i in range(1, n_items + 1)
        ).encode("latin-1")
    )
    return folder


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_zip(folder: Path, zip_path: Path, prefix: str, extra: dict[str, bytes] | None = None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"{prefix}/{f.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    zip_path.write_bytes(buf.getvalue())
    return zip_path


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The folder holding ml-100k.zip for the real pipeline (MOVIELENS_MIRROR), or a skip."""
    mirror = Path(os.environ.get("MOVIELENS_MIRROR", SHARED_DATA))
    if not (mirror / "ml-100k.zip").is_file():
        pytest.skip(f"no ml-100k.zip in {mirror}; set MOVIELENS_MIRROR to run the real pipeline")
    return mirror


@pytest.fixture
def ml100k_dir(tmp_path) -> Path:
    return make_ml100k_files(tmp_path / "ml-100k")


@pytest.fixture
def canonical(ml100k_dir):
    from deepfm.data.movielens import load_canonical

    return load_canonical("ml-100k", ml100k_dir, 4, 1980)


@pytest.fixture
def split(canonical):
    from deepfm.data.splitting import split_dataset

    interactions, users, items = canonical
    return split_dataset(
        interactions,
        users,
        items,
        fields=ML_FIELDS,
        seed=7,
        min_positives=3,
        num_negatives=30,
        history_length=4,
    )


def tiny_frames():
    """A hand-made interaction table for protocol checks."""
    return pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2, 2],
            "item_id": [10, 11, 12, 13, 14, 10, 11, 12],
            "rating": [5, 4, 2, 5, 5, 5, 4, 1],
            "timestamp": [1, 2, 3, 4, 4, 1, 2, 3],
        }
    )


def make_synthetic_ratings(path: Path, n_users=300, n_items=200, per_user=40, seed=0) -> Path:
    """A dataset no MovieLens code knows, as one CSV:
    `user,item,stars,when,age,category,tags,device` with ratings 0-10, text item ids, ages
    missing for about 15% of users, a categorical and a multi-valued item column, and the
    device of each rating (a context column, drawn apart: it carries no signal).

    The signal, by construction: each user loves one of 5 categories (chosen from the age
    when it is known) and rates its items 7-10, everything else 0-6. Items are drawn evenly
    over categories, so popularity alone cannot tell a user's next liked item.
    """
    rng = np.random.default_rng(seed)
    categories = np.array(["drama", "comedy", "horror", "docs", "anime"])
    tags = np.array(["old", "new", "long", "short", "loud", "quiet", "sad", "fun"])
    item_cat = rng.integers(0, 5, n_items)
    item_tags = ["|".join(rng.choice(tags, size=rng.integers(1, 4), replace=False)) for _ in
                 range(n_items)]  # fmt: skip
    ages = rng.integers(18, 73, n_users).astype(float)
    favourite = np.minimum((ages - 18) // 11, 4).astype(int)
    ages[rng.random(n_users) < 0.15] = np.nan
    rows = []
    devices = iter(
        np.random.default_rng(seed + 1).choice(["phone", "tv", "web"], n_users * per_user)
    )
    for u in range(n_users):
        liked = np.flatnonzero(item_cat == favourite[u])
        other = np.flatnonzero(item_cat != favourite[u])
        chosen = np.r_[
            rng.choice(liked, size=min(per_user // 2, len(liked)), replace=False),
            rng.choice(other, size=min(per_user // 2, len(other)), replace=False),
        ]
        times = np.sort(rng.integers(1_600_000_000, 1_700_000_000, len(chosen)))
        for item, when in zip(rng.permutation(chosen), times, strict=True):
            stars = rng.integers(7, 11) if item_cat[item] == favourite[u] else rng.integers(0, 7)
            age = "" if np.isnan(ages[u]) else f"{ages[u]:g}"
            rows.append(
                f"u{u},m{item:03d},{stars},{when},{age},{categories[item_cat[item]]},"
                f"{item_tags[item]},{next(devices)}\n"
            )
    path.write_text("user,item,stars,when,age,category,tags,device\n" + "".join(rows))
    return path


SYNTHETIC_DECLARATION = {
    "source": "local",
    "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "timestamp": "when"},
    "label": {"threshold": 7},
    "fields": {
        "user_id": {"source": "user", "kind": "sparse"},
        "age": {"source": "user", "kind": "dense", "scaler": "standard", "missing": "mean"},
        "item_id": {"source": "item", "kind": "sparse"},
        "category": {"source": "item", "kind": "sparse"},
        "tags": {"source": "item", "kind": "sequence", "separator": "|"},
        "device": {"source": "context", "kind": "sparse"},
    },
}


def synthetic_declaration(csv: Path) -> dict:
    """SYNTHETIC_DECLARATION with the file's path and sha256 filled in."""
    sha = hashlib.sha256(csv.read_bytes()).hexdigest()
    return {**SYNTHETIC_DECLARATION, "files": {"interactions": {"path": str(csv), "sha256": sha}}}


def make_criteo_file(path: Path, n_rows=20_000, seed=0) -> Path:
    """Rows in the Criteo Kaggle `train.txt` format (tab-separated: label, I1..I13, C1..C26,
    empty fields allowed), with a planted signal that a linear model cannot see: the click
    odds depend on the *product* of a +-1 sign of C1's value and one of C2's (an XOR), plus
    a small main effect of I1. Factorised interactions (FM, DeepFM) can learn the product;
    LR only the main effect."""
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, 30, n_rows)
    c2 = rng.integers(0, 30, n_rows)
    sign1 = rng.choice([-1.0, 1.0], 30)
    sign2 = rng.choice([-1.0, 1.0], 30)
    i1 = rng.poisson(6, n_rows)
    logit = 2.0 * sign1[c1] * sign2[c2] + 0.4 * (i1 > 6) - 0.3
    label = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(int)
    lines = []
    for r in range(n_rows):
        ints = [str(i1[r])] + [
            "" if rng.random() < 0.1 else str(int(rng.integers(-2, 500))) for _ in range(12)
        ]
        cats = [f"{c1[r] * 2654435761 % 2**32:08x}", f"{c2[r] * 40503 % 2**32:08x}"] + [
            "" if rng.random() < 0.05 else f"{int(rng.integers(0, 50)):08x}" for _ in range(24)
        ]
        lines.append("\t".join([str(label[r]), *ints, *cats]) + "\n")
    path.write_text("".join(lines))
    return path


def criteo_declaration(path: Path, min_count: int = 2) -> dict:
    """A criteo dataset block as params.yaml declares it, for the file at `path`."""
    ints = {f"I{i}": {"source": "context", "kind": "sparse", "log_buckets": True}
            for i in range(1, 14)}  # fmt: skip
    cats = {f"C{i}": {"source": "context", "kind": "sparse", "min_count": min_count}
            for i in range(1, 27)}  # fmt: skip
    return {
        "source": "criteo",
        "protocol": {"name": "ctr", "split": "order", "fractions": [0.8, 0.1, 0.1]},
        "files": {
            "interactions": {
                "path": str(path),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        },
        "label": {"column": "label"},
        "fields": {**ints, **cats},
    }


class Recorder:
    """Stands in for dvclive.Live; can simulate a kill after a given number of epochs."""

    def __init__(self, interrupt_after: int | None = None):
        self.rows, self.row, self.interrupt_after = [], {}, interrupt_after

    def log_metric(self, name, value):
        self.row[name] = value

    def next_step(self):
        self.rows.append(self.row)
        self.row = {}
        if self.interrupt_after is not None and len(self.rows) == self.interrupt_after:
            raise KeyboardInterrupt


# `pytest -n 2` (make test): two xdist workers. Each of these modules builds one real pipeline
# in a fixture its tests share, so the scheduler hands each module out whole, to one worker;
# every other test is handed out alone. Work goes out in the order the workers collected it,
# and these modules are collected first, in this order (the longest first), so that the slow
# builds start at once and the unit tests fill in around them. (xdist's own `--dist loadgroup`
# would do the grouping by mark, but pytest 9.2's node ids make it group nothing:
# pytest-xdist issue #1386.) Plain `pytest` keeps the file order.
PIPELINE_MODULES = [
    "tests/test_pipeline_resume.py",
    "tests/test_pipeline.py",
    "tests/test_declared_ctr_pipeline.py",
    "tests/test_declared_pipeline.py",
]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: known only where xdist is loaded
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":  # what -n alone gives; another --dist keeps its own
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PipelineModulesWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return module if module in PIPELINE_MODULES else nodeid

    config.option.loadscopereorder = False  # keep the collection order
    return PipelineModulesWhole(config, log)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item) -> int:
        module = item.nodeid.split("::")[0]
        return (
            PIPELINE_MODULES.index(module) if module in PIPELINE_MODULES else len(PIPELINE_MODULES)
        )

    items.sort(key=rank)
