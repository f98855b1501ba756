"""A declared dataset -> its files (fetch) and its canonical tables (preprocess).

`source: local` reads the declared CSV / Parquet files (deepfm.data.local); any other source
is a registered release with its own parser (movielens, clicklogs). Either way the result is
the canonical contract: interactions (user_id, item_id, rating, timestamp, label), users
(user_id + user fields), items (item_id + item fields), and every declared field must be
there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from deepfm.data.clicklogs import LABELS as CLICK_LABELS
from deepfm.data.clicklogs import PARSERS as CLICK_LOGS
from deepfm.data.clicklogs import stream_click_log
from deepfm.data.declaration import FILE_SOURCES, DatasetSpec
from deepfm.data.local import load_local, raw_name
from deepfm.data.movielens import ParseError, load_canonical
from deepfm.data.sources import FetchError, digests, fetch
from deepfm.io import atomic_dir

RELEASE_OPTIONS = {"single_years_from": 1980}  # what the MovieLens parsers take


def fetch_dataset(spec: DatasetSpec, dest: Path, *, root: Path = Path(".")) -> Path:
    """The dataset's files into the folder `dest` (replaced whole), each checked against its
    sha256. Local paths are read relative to `root` (the repository) unless absolute."""
    if spec.source not in FILE_SOURCES:
        return fetch(spec.source, dest)
    with atomic_dir(dest) as tmp:
        for role, file in spec.files.items():
            path = Path(file.path) if Path(file.path).is_absolute() else root / file.path
            if not path.is_file():
                raise FetchError(
                    f"datasets.{spec.name}.files.{role}.path: {path} does not exist; fix the "
                    "path (absolute, or relative to the repository root)."
                )
            with open(path, "rb") as f:
                actual = digests(f, ("sha256",))["sha256"]
            if actual != file.sha256:
                raise FetchError(
                    f"{path}: sha256 {actual}, but datasets.{spec.name}.files.{role}.sha256 "
                    f"says {file.sha256}. The file changed since it was declared: if the "
                    "change is meant, put the new sha256 in params.yaml (a new dataset version)."
                )
            shutil.copyfile(path, tmp / raw_name(role, file))
    return dest


def _click_log_file(spec: DatasetSpec, raw: Path) -> tuple[Path, str]:
    """(the click log's verified copy in `raw`, the declared path that messages name); its
    label column checked."""
    expected = CLICK_LABELS[spec.source]
    if spec.label_column != expected:
        raise ParseError(
            f"params.yaml: 'datasets.{spec.name}.label.column' is {spec.label_column!r}; "
            f"{spec.source}'s label column is {expected}."
        )
    file = spec.files["interactions"]
    path = raw / raw_name("interactions", file)
    if not path.is_file():
        raise ParseError(f"{path} not found: run the fetch stage first (dvc repro fetch).")
    return path, file.path


def _click_log(spec: DatasetSpec, raw: Path) -> tuple[pd.DataFrame, ...]:
    path, shown_as = _click_log_file(spec, raw)
    try:
        interactions = CLICK_LOGS[spec.source](path)
    except ParseError as e:  # name the declared file, not its verified copy
        raise ParseError(str(e).replace(str(path), shown_as)) from None
    interactions["label"] = interactions[spec.label_column].astype("int8")
    users = pd.DataFrame({"user_id": [0]})
    items = pd.DataFrame({"item_id": [0]})
    return interactions, users, items


def stream_click_log_tables(spec: DatasetSpec, raw: Path, out: Path) -> int:
    """A click log's canonical tables written into the folder `out`, the interactions
    streamed (deepfm.data.clicklogs.stream_click_log). Returns the number of rows."""
    path, shown_as = _click_log_file(spec, raw)
    rows = stream_click_log(spec.source, path, out / "interactions.parquet", shown_as=shown_as)
    pd.DataFrame({"user_id": [0]}).to_parquet(out / "users.parquet", index=False)
    pd.DataFrame({"item_id": [0]}).to_parquet(out / "items.parquet", index=False)
    return rows


def canonical_tables(spec: DatasetSpec, raw: Path) -> tuple[pd.DataFrame, ...]:
    """Parse the raw folder into the canonical tables, with the declared label rule."""
    if spec.source == "local":
        if spec.options:
            raise ParseError(
                f"params.yaml: 'datasets.{spec.name}.options' applies to registered releases; "
                "a local dataset takes none: remove it."
            )
        interactions, users, items = load_local(spec, raw)
    elif spec.source in CLICK_LOGS:
        interactions, users, items = _click_log(spec, raw)
    else:
        unknown = sorted(set(spec.options) - set(RELEASE_OPTIONS))
        if unknown:
            raise ParseError(
                f"params.yaml: 'datasets.{spec.name}.options.{unknown[0]}' is not an option of "
                f"{spec.source}; its options: {', '.join(RELEASE_OPTIONS)}."
            )
        if spec.label_threshold is None:
            raise ParseError(
                f"params.yaml: 'datasets.{spec.name}.label': {spec.source} has ratings, not a "
                "given label; use label: {threshold: 4}."
            )
        options = {**RELEASE_OPTIONS, **spec.options}
        interactions, users, items = load_canonical(
            spec.source, raw, spec.label_threshold, options["single_years_from"]
        )
    for side, table in (("user", users), ("item", items), ("context", interactions)):
        missing = [f.name for f in spec.fields if f.source == side and f.name not in table]
        if missing:
            raise ParseError(
                f"params.yaml: 'datasets.{spec.name}.fields.{missing[0]}' is a {side} field, "
                f"but the {'interaction' if side == 'context' else side}s table has no such "
                f"column; it has: {', '.join(table.columns)}."
            )
    return interactions, users, items
