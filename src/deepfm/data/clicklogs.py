"""Click logs in their published formats -> the canonical interactions table (ctr protocol).

- criteo: the Kaggle Display Advertising Challenge `train.txt` (and the Criteo 1TB day files,
  same layout): tab-separated, no header, 40 fields: the 0/1 label, 13 integer features
  I1..I13 and 26 hashed categorical features C1..C26 (8 hex digits); any feature may be empty.
  A gzip-compressed file (the 1TB release's `day_N.gz`) is read as it is, without unpacking.
- avazu: the Kaggle CTR Prediction `train` CSV: a header, then id, click, hour (YYMMDDHH) and
  21 categorical columns. `hour` becomes `hour_of_day` (00..23) and `weekday` (0 = Monday).

The row order is kept as `timestamp` (criteo: the row number, the files are in time order;
avazu: the hour in unix seconds, ties in file order). Neither has users or items to rank, so
the canonical user_id and item_id are 0 for every row.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.movielens import ParseError, _check_field_counts, raise_first_bad_line

CRITEO_INTS = [f"I{i}" for i in range(1, 14)]
CRITEO_CATS = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_INTS, *CRITEO_CATS]
AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip


def open_log(path: Path):
    """The click log as a binary file, decompressed on the fly if it is gzip (by its first
    bytes, whatever its name)."""
    import gzip

    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _read(
    path: Path, sep: str, names: list[str], header: bool, data: bytes | None = None, offset=0
) -> pd.DataFrame:
    """The file (or `data`, a chunk of its lines starting after line `offset`) as text."""
    chunk = data is not None
    if not chunk:
        with open_log(path) as f:
            data = f.read()
    data = data.replace(b"\r\n", b"\n")
    if not chunk and not data.strip():
        raise ParseError(f"{path} is empty: give the click log's file (dvc repro fetch).")
    header = header and not chunk
    body = data.split(b"\n", 1)[1] if header else data
    if header:
        _check_header(data.split(b"\n", 1)[0], path, None, sep, names)
    try:
        _check_field_counts(body, sep.encode(), len(names), path)
    except ParseError as e:
        shift = offset + (1 if header else 0)  # count lines from the file's first line
        if not shift:
            raise
        line = int(str(e).split(", line ")[1].split(":")[0])
        raise ParseError(str(e).replace(f"line {line}:", f"line {line + shift}:", 1)) from None
    return pd.read_csv(
        io.BytesIO(body), sep=sep, header=None, names=names, dtype=str,
        keep_default_na=False, quoting=3, engine="c",
    )  # fmt: skip


def _integers(frame: pd.DataFrame, column: str, path: Path, first_line: int) -> np.ndarray:
    """A column of integers, NaN where empty; a non-integer names its line."""
    text = frame[column]
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    bad = (np.isnan(values) & (text != "").to_numpy()) | (values % 1 > 0)
    why = "expected an integer or an empty field."
    raise_first_bad_line(bad, path, first_line, lambda i: f"{column} is {text.iloc[i]!r}; {why}")
    return values


def _labels(frame: pd.DataFrame, column: str, path: Path, first_line: int) -> np.ndarray:
    labels, text = _integers(frame, column, path, first_line), frame[column]
    bad = ~np.isin(labels, (0, 1))
    why = "a click label is 0 or 1."
    raise_first_bad_line(bad, path, first_line, lambda i: f"{column} is {text.iloc[i]!r}; {why}")
    return labels.astype(np.int8)


def _canonical(label: np.ndarray, timestamp: np.ndarray, columns: dict) -> pd.DataFrame:
    n = len(label)
    ids = {"user_id": np.zeros(n, np.int64), "item_id": np.zeros(n, np.int64)}
    rows = {"rating": label.astype(np.float32), "timestamp": timestamp, "label": label}
    return pd.DataFrame({**ids, **rows, **columns})


def _criteo_fast(data: bytes, offset: int) -> pd.DataFrame | None:
    """The typed parse of well-formed rows (Arrow's multithreaded CSV reader); None when
    anything is off, and the careful parser below finds and names the bad line."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {**dict.fromkeys(["label", *CRITEO_INTS], pa.float64()),
             **dict.fromkeys(CRITEO_CATS, pa.string())}  # fmt: skip
    try:
        convert = pacsv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True
        )
        table = pacsv.read_csv(
            io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=CRITEO_COLUMNS),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=convert,
        )  # fmt: skip
    except (pa.ArrowInvalid, ValueError):
        return None
    frame = table.to_pandas()
    ints = frame[CRITEO_INTS].to_numpy()
    label = frame["label"].to_numpy()
    if (np.nan_to_num(ints) % 1 != 0).any() or not np.isin(label, (0.0, 1.0)).all():
        return None
    columns = {c: frame[c].to_numpy() for c in CRITEO_INTS}
    columns |= {c: frame[c] for c in CRITEO_CATS}
    return _canonical(
        label.astype(np.int8), np.arange(offset, offset + len(frame), dtype=np.int64), columns
    )


def parse_criteo(path: Path, data: bytes | None = None, offset: int = 0) -> pd.DataFrame:
    """The whole file, or `data`: its lines offset + 1, offset + 2, ..."""
    if data is not None and data.strip():
        fast = _criteo_fast(data.replace(b"\r\n", b"\n"), offset)
        if fast is not None:
            return fast
    frame = _read(path, "\t", CRITEO_COLUMNS, header=False, data=data, offset=offset)
    columns = {c: _integers(frame, c, path, 1 + offset) for c in CRITEO_INTS}
    columns |= {c: frame[c].where(frame[c] != "", None) for c in CRITEO_CATS}
    label = _labels(frame, "label", path, 1 + offset)
    return _canonical(label, np.arange(offset, offset + len(frame), dtype=np.int64), columns)


def parse_avazu(path: Path, data: bytes | None = None, offset: int = 0) -> pd.DataFrame:
    """The whole file, or `data`: its lines offset + 1, ... (line 1 is the header)."""
    frame = _read(path, ",", AVAZU_COLUMNS, header=True, data=data, offset=offset)
    hour = frame["hour"]
    when = pd.to_datetime(hour, format="%y%m%d%H", errors="coerce")
    raise_first_bad_line(
        when.isna().to_numpy(),
        path,
        1 + max(offset, 1),
        lambda i: f"hour is {hour.iloc[i]!r}; expected YYMMDDHH, e.g. 14102100.",
    )
    categorical = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "hour")]
    columns = {c: frame[c].where(frame[c] != "", None).to_numpy(object) for c in categorical}
    columns["hour_of_day"] = when.dt.strftime("%H").to_numpy(object)
    columns["weekday"] = when.dt.day_of_week.astype(str).to_numpy(object)
    label = _labels(frame, "click", path, 1 + max(offset, 1))
    seconds = ((when - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    out = _canonical(label, seconds, columns)
    out["click"] = label
    return out


PARSERS = {"criteo": parse_criteo, "avazu": parse_avazu}
LABELS = {"criteo": "label", "avazu": "click"}  # each format's own label column


def stream_click_log(
    source: str, path: Path, out: Path, *, shown_as: str | None = None, chunk_lines=250_000
) -> int:
    """Parse the click log at `path` chunk by chunk into the canonical parquet `out` (one row
    group per chunk), so memory holds one chunk whatever the file's size. The same checks and
    messages as the whole-file parser, with the file's own line numbers (`shown_as`: the path
    the messages name). Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepfm.io import atomic_path

    parse = PARSERS[source]
    header = source == "avazu"
    rows = 0
    with open_log(path) as f, atomic_path(out) as tmp:
        if header:
            first = f.readline()
            _check_header(first, path, shown_as, ",", AVAZU_COLUMNS)
        writer = None
        offset = 1 if header else 0
        try:
            while True:
                lines = list(itertools.islice(f, chunk_lines))
                if not lines:
                    break
                try:
                    frame = parse(path, data=b"".join(lines), offset=offset)
                except ParseError as e:
                    raise ParseError(str(e).replace(str(path), shown_as or str(path))) from None
                if writer is None:  # text columns stay text even in a chunk of only nulls
                    schema = pa.Schema.from_pandas(frame, preserve_index=False)
                    for i, name in enumerate(schema.names):
                        if frame[name].dtype == object:
                            schema = schema.set(i, pa.field(name, pa.string()))
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                writer.write_table(table)
                offset += len(lines)
                rows += len(frame)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ParseError(f"{shown_as or path} has no rows: give the click log's file.")
    return rows


def _check_header(first: bytes, path: Path, shown_as: str | None, sep: str, names) -> None:
    got = first.decode("utf-8", "replace").strip().split(sep)
    if got != list(names):
        raise ParseError(
            f"{shown_as or path}, line 1: the header is {sep.join(got)!r}; expected "
            f"{sep.join(names)!r} (the published file's header)."
        )
