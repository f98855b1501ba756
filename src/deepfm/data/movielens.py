"""MovieLens raw files -> canonical tables (interactions, users, items).

Canonical tables are dataset-independent:
- interactions: user_id, item_id, rating, timestamp, label (rating >= threshold)
- users: user_id, gender, age_bucket, occupation, zip_prefix
- items: item_id, title, year, year_bucket, genres (list of genre names)

Adding a dataset = one parser function registered in PARSERS plus its entry in
sources.DATASETS.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd


class ParseError(ValueError):
    """A raw file is malformed; the message names the file, the line and the fix."""


# The 7 age groups of ML-1M's users.dat (code -> label); ML-100K raw ages are binned to match.
AGE_BUCKETS = {
    1: "Under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}

# ML-1M encodes occupations as 0..20 (its README); ML-100K spells them out.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def age_bucket(age: np.ndarray) -> np.ndarray:
    """Raw ages -> the ML-1M bucket codes (1, 18, 25, 35, 45, 50, 56)."""
    codes = np.array(list(AGE_BUCKETS), dtype=np.int16)
    return codes[np.digitize(age, codes[1:])]


def zip_prefix(zips: pd.Series) -> pd.Series:
    """First digit of a US zip code (its national area); non-numeric codes (Canada etc.) ->
    'other'."""
    zips = zips.astype(str).str.strip()
    first = zips.str[:1]
    return first.where(first.str.isdigit(), "other")


def year_bucket(years: pd.Series, single_years_from: int) -> pd.Series:
    """Release year -> its own label ('1995') from `single_years_from` on, else its decade
    ('1970s'); unknown year -> missing.

    Why single years: a user's held-out positives are their latest ratings and skew to new
    releases (on ML-100K 35% of test items came out in 1997-98, against 16% of train
    positives), which a '1990s' bucket cannot tell apart from 1990.
    """
    years = years.astype("Int64")
    decade = (years // 10 * 10).astype("string") + "s"
    return years.astype("string").where(years >= single_years_from, decade)


def _check_field_counts(data: bytes, sep: bytes, expected: int, path: Path) -> None:
    """Every non-empty line must have exactly `expected` fields (vectorized over the bytes)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if len(buf) and buf[-1] != ord("\n"):
        ends = np.r_[ends, len(buf)]
    starts = np.r_[0, ends[:-1] + 1]
    seps = np.flatnonzero(buf == sep[0])
    # fields per line = separators before the line's end minus those before its start, plus 1
    fields = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
    bad = fields != expected  # a blank line counts as 1 field, so it is reported too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, line {i + 1}: {int(fields[i])} fields, expected {expected} "
            f"({path.name} is {sep.decode()!r}-separated); fix or remove that line."
        )


def _read_bytes(path: Path, sep: str, n_fields: int) -> tuple[bytes, str]:
    data = path.read_bytes().replace(b"\r\n", b"\n")
    if len(sep) > 1:  # pandas' C parser takes one-byte separators only
        data = data.replace(sep.encode(), b"\t")
        sep = "\t"
    _check_field_counts(data, sep.encode(), n_fields, path)
    return data, sep


def _read_table(
    path: Path, sep: str, names: list[str], encoding: str, dtype=str, data: bytes | None = None
) -> pd.DataFrame:
    """Read a delimited file (as strings by default), failing with the file and line of a bad
    field count."""
    if data is None:
        data, sep = _read_bytes(path, sep, len(names))
    elif len(sep) > 1:
        sep = "\t"
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            sep=sep,
            header=None,
            names=names,
            dtype=dtype,
            encoding=encoding,
            keep_default_na=False,
            quoting=3,  # QUOTE_NONE: titles contain quotes
            engine="c",
        )
    except pd.errors.ParserError as e:
        raise ParseError(f"{path}: {e}; each line must have {len(names)} fields.") from None
    except UnicodeDecodeError as e:
        raise ParseError(f"{path}: not {encoding} text ({e}).") from None
    return frame


def _to_int(frame: pd.DataFrame, column: str, path: Path, dtype=np.int64) -> np.ndarray:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna().to_numpy() | (values.to_numpy() % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, line {i + 1}: {column} {frame[column].iloc[i]!r} is not an integer."
        )
    return values.to_numpy().astype(dtype)


RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def parse_ratings(path: Path, sep: str, *, rating_range=(1.0, 5.0)) -> pd.DataFrame:
    data, _ = _read_bytes(path, sep, len(RATING_COLUMNS))
    lo, hi = rating_range
    try:  # fast path: typed columns straight from the C parser (ML-20M: 20M rows)
        typed = _read_table(
            path,
            sep,
            RATING_COLUMNS,
            "latin-1",
            data=data,
            dtype={
                "user_id": np.int64,
                "item_id": np.int64,
                "rating": np.float64,
                "timestamp": np.int64,
            },
        )
        rating = typed["rating"].to_numpy()
        bad = np.isnan(rating) | (rating < lo) | (rating > hi)
        if not bad.any():
            out = pd.DataFrame(
                {
                    "user_id": typed["user_id"].to_numpy().astype(np.int32),
                    "item_id": typed["item_id"].to_numpy().astype(np.int32),
                    "rating": rating.astype(np.float32),
                    "timestamp": typed["timestamp"].to_numpy(),
                }
            )
            del typed
            return _check_duplicates(out, path)
    except (ValueError, OverflowError):
        pass
    # slow path, only for a malformed file: find and name the first bad line
    frame = _read_table(path, sep, RATING_COLUMNS, "latin-1", data=data)
    rating = pd.to_numeric(frame["rating"].str.strip(), errors="coerce").to_numpy(np.float64)
    bad = np.isnan(rating) | (rating < lo) | (rating > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, line {i + 1}: rating {frame['rating'].iloc[i]!r} is not a number in "
            f"[{lo:g}, {hi:g}]."
        )
    out = pd.DataFrame(
        {
            "user_id": _to_int(frame, "user_id", path, np.int32),
            "item_id": _to_int(frame, "item_id", path, np.int32),
            "rating": rating.astype(np.float32),
            "timestamp": _to_int(frame, "timestamp", path, np.int64),
        }
    )
    return _check_duplicates(out, path)


def _check_duplicates(out: pd.DataFrame, path: Path) -> pd.DataFrame:
    key = out["user_id"].to_numpy().astype(np.int64) << 32 | out["item_id"].to_numpy()
    dup = pd.Series(key).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(
            f"{path}, line {i + 1}: user {out.user_id[i]} rates item {out.item_id[i]} a second "
            "time; keep one rating per (user, item)."
        )
    return out


def _check_ids(ratings: pd.DataFrame, column: str, known: np.ndarray, path: Path, what: str):
    unknown = ~np.isin(ratings[column].to_numpy(), known)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ParseError(
            f"{path}, line {i + 1}: {column} {ratings[column].iloc[i]} is not in the {what} file; "
            f"every rated {column.split('_')[0]} must be listed there."
        )


def _check_unique(frame: pd.DataFrame, column: str, path: Path) -> None:
    dup = frame[column].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(f"{path}, line {i + 1}: {column} {frame[column].iloc[i]} appears twice.")


def parse_ml100k(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = parse_ratings(raw / "u.data", "\t")

    users_path = raw / "u.user"
    u = _read_table(users_path, "|", ["user_id", "age", "gender", "occupation", "zip"], "latin-1")
    users = pd.DataFrame(
        {
            "user_id": _to_int(u, "user_id", users_path, np.int32),
            "gender": u["gender"].str.strip(),
            "age_bucket": age_bucket(_to_int(u, "age", users_path)),
            "occupation": u["occupation"].str.strip(),
            "zip_prefix": zip_prefix(u["zip"]),
        }
    )

    items_path = raw / "u.item"
    names = ["item_id", "title", "release_date", "video_date", "url", *ML100K_GENRES]
    it = _read_table(items_path, "|", names, "latin-1")
    flags = np.stack([_to_int(it, g, items_path, np.int8) for g in ML100K_GENRES], axis=1)
    genre_names = np.array(ML100K_GENRES, dtype=object)
    years = pd.to_datetime(it["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame(
        {
            "item_id": _to_int(it, "item_id", items_path, np.int32),
            "title": it["title"],
            "year": years.astype("Int16"),
            "genres": [list(genre_names[row.astype(bool)]) for row in flags],
        }
    )
    return ratings, users, items


def parse_ml1m(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = parse_ratings(raw / "ratings.dat", "::")

    users_path = raw / "users.dat"
    u = _read_table(users_path, "::", ["user_id", "gender", "age", "occupation", "zip"], "latin-1")
    age = _to_int(u, "age", users_path, np.int16)
    if not np.isin(age, list(AGE_BUCKETS)).all():
        i = int(np.flatnonzero(~np.isin(age, list(AGE_BUCKETS)))[0])
        raise ParseError(f"{users_path}, line {i + 1}: age code {age[i]} is not one of ML-1M's.")
    occ = _to_int(u, "occupation", users_path)
    if ((occ < 0) | (occ >= len(ML1M_OCCUPATIONS))).any():
        i = int(np.flatnonzero((occ < 0) | (occ >= len(ML1M_OCCUPATIONS)))[0])
        raise ParseError(f"{users_path}, line {i + 1}: occupation code {occ[i]} is not 0..20.")
    users = pd.DataFrame(
        {
            "user_id": _to_int(u, "user_id", users_path, np.int32),
            "gender": u["gender"].str.strip(),
            "age_bucket": age,
            "occupation": np.array(ML1M_OCCUPATIONS, dtype=object)[occ],
            "zip_prefix": zip_prefix(u["zip"]),
        }
    )

    items_path = raw / "movies.dat"
    it = _read_table(items_path, "::", ["item_id", "title", "genres"], "latin-1")
    year = pd.to_numeric(it["title"].str.extract(r"\((\d{4})\)\s*$", expand=False), errors="coerce")
    items = pd.DataFrame(
        {
            "item_id": _to_int(it, "item_id", items_path, np.int32),
            "title": it["title"],
            "year": year.astype("Int16"),
            "genres": [[g for g in s.split("|") if g] for s in it["genres"]],
        }
    )
    return ratings, users, items


PARSERS: dict[str, tuple[Callable[[Path], tuple], dict[str, str]]] = {
    # name -> (parser, the raw files that ratings/users/items come from, for error messages)
    "ml-100k": (parse_ml100k, {"ratings": "u.data", "users": "u.user", "items": "u.item"}),
    "ml-1m": (parse_ml1m, {"ratings": "ratings.dat", "users": "users.dat", "items": "movies.dat"}),
}


def load_canonical(
    name: str, raw: Path, label_threshold: float, single_years_from: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parse dataset `name` from folder `raw` into the three canonical tables, validated."""
    if name not in PARSERS:
        raise ParseError(f"no parser for dataset {name!r}; known: {', '.join(sorted(PARSERS))}.")
    parser, files = PARSERS[name]
    missing = [f for f in files.values() if not (raw / f).is_file()]
    if missing:
        raise ParseError(
            f"{raw} lacks {', '.join(missing)}: run the fetch stage first (dvc repro fetch)."
        )
    ratings, users, items = parser(raw)
    _check_unique(users, "user_id", raw / files["users"])
    _check_unique(items, "item_id", raw / files["items"])
    _check_ids(ratings, "user_id", users["user_id"].to_numpy(), raw / files["ratings"], "users")
    _check_ids(ratings, "item_id", items["item_id"].to_numpy(), raw / files["ratings"], "items")

    ratings["label"] = (ratings["rating"] >= label_threshold).astype(np.int8)
    # A canonical order makes every later stage independent of the raw file's row order.
    ratings = ratings.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
    users["age_bucket"] = users["age_bucket"].map(AGE_BUCKETS)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    items["year_bucket"] = year_bucket(items["year"], single_years_from)
    items = items[["item_id", "title", "year", "year_bucket", "genres"]]
    return ratings.reset_index(drop=True), users, items
