"""MovieLens raw files -> the canonical tables (interactions, users, items; the contract of
deepfm.data.canonical). A release is one parser registered in PARSERS plus its entry in
sources.DATASETS (docs/architecture.md, "Registered releases").
"""

from __future__ import annotations

import csv
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
            quoting=3,
            engine="c",  # 3: QUOTE_NONE, titles hold quotes
        )
    except pd.errors.ParserError as e:
        raise ParseError(f"{path}: {e}; each line must have {len(names)} fields.") from None
    except UnicodeDecodeError as e:
        raise ParseError(f"{path}: not {encoding} text ({e}).") from None
    return frame


def raise_first_bad_line(
    bad: np.ndarray, path: Path, first_line: int, problem: Callable[[int], str]
) -> None:
    """The slow path of a malformed file (the ratings and click-log parsers'): a ParseError
    naming the file, the line of the first row where `bad` holds (row i is line
    i + first_line) and problem(i), what is wrong with that row's value."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(f"{path}, line {i + first_line}: {problem(i)}")


def _to_int(frame: pd.DataFrame, column: str, path: Path, dtype=np.int64) -> np.ndarray:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna().to_numpy() | (values.to_numpy() % 1 != 0)
    raise_first_bad_line(
        bad, path, 1, lambda i: f"{column} {frame[column].iloc[i]!r} is not an integer."
    )
    return values.to_numpy().astype(dtype)


def _checked_ratings(text: pd.Series, rating_range, path: Path, first_line: int) -> np.ndarray:
    """A text column of ratings -> float64; the first that is not a number in rating_range
    names its line (row i is line i + first_line)."""
    lo, hi = rating_range
    rating = pd.to_numeric(text.str.strip(), errors="coerce").to_numpy(np.float64)
    bad = np.isnan(rating) | (rating < lo) | (rating > hi)

    def problem(i: int) -> str:
        return f"rating {text.iloc[i]!r} is not a number in [{lo:g}, {hi:g}]."

    raise_first_bad_line(bad, path, first_line, problem)
    return rating


RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def parse_ratings(path: Path, sep: str, *, rating_range=(1.0, 5.0)) -> pd.DataFrame:
    data, _ = _read_bytes(path, sep, len(RATING_COLUMNS))
    lo, hi = rating_range
    try:  # fast path: typed columns straight from the C parser (ML-20M: 20M rows)
        dtype = dict(user_id=np.int64, item_id=np.int64, rating=np.float64, timestamp=np.int64)
        typed = _read_table(path, sep, RATING_COLUMNS, "latin-1", data=data, dtype=dtype)
        rating = typed["rating"].to_numpy()
        bad = np.isnan(rating) | (rating < lo) | (rating > hi)
        if not bad.any():
            ids = {c: typed[c].to_numpy().astype(np.int32) for c in ("user_id", "item_id")}
            ts = typed["timestamp"].to_numpy()
            out = pd.DataFrame({**ids, "rating": rating.astype(np.float32), "timestamp": ts})
            del typed
            return _check_duplicates(out, path, first_line=1)
    except (ValueError, OverflowError):
        pass
    # slow path, only for a malformed file: find and name the first bad line
    frame = _read_table(path, sep, RATING_COLUMNS, "latin-1", data=data)
    rating = _checked_ratings(frame["rating"], rating_range, path, first_line=1)
    ids = {c: _to_int(frame, c, path, np.int32) for c in ("user_id", "item_id")}
    ts = _to_int(frame, "timestamp", path, np.int64)
    out = pd.DataFrame({**ids, "rating": rating.astype(np.float32), "timestamp": ts})
    return _check_duplicates(out, path, first_line=1)


def _check_duplicates(out: pd.DataFrame, path: Path, first_line: int) -> pd.DataFrame:
    """`out`, or a ParseError naming the line of the first repeated (user, item) (row i is
    line i + first_line)."""
    key = out["user_id"].to_numpy().astype(np.int64) << 32 | out["item_id"].to_numpy().view(
        np.uint32
    )
    ordered = np.sort(key)  # a sort detects a repeat with less memory than a hash table
    if (ordered[1:] == ordered[:-1]).any():
        del ordered
        dup = pd.Series(key).duplicated().to_numpy()  # which line repeats first, in file order
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(
            f"{path}, line {i + first_line}: user {out.user_id[i]} rates item {out.item_id[i]} "
            "a second time; keep one rating per (user, item)."
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
    raise_first_bad_line(dup, path, 1, lambda i: f"{column} {frame[column].iloc[i]} appears twice.")


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
    bad = ~np.isin(age, list(AGE_BUCKETS))
    raise_first_bad_line(bad, users_path, 1, lambda i: f"age code {age[i]} is not one of ML-1M's.")
    occ = _to_int(u, "occupation", users_path)
    bad = (occ < 0) | (occ >= len(ML1M_OCCUPATIONS))
    raise_first_bad_line(bad, users_path, 1, lambda i: f"occupation code {occ[i]} is not 0..20.")
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
    item_id = _to_int(it, "item_id", items_path, np.int32)
    return ratings, users, _items_from_columns(item_id, it["title"], it["genres"])


# ML-10M on: half-star ratings, no demographics (users is the distinct rated ids, nothing more),
# and "(no genres listed)" for a movie without genres.
HALF_STAR_RANGE = (0.5, 5.0)
NO_GENRES = "(no genres listed)"
# ML-20M, ML-25M and ML-32M: RFC 4180 CSV in UTF-8, one header line, these columns.
CSV_HEADERS = {
    "ratings.csv": ["userId", "movieId", "rating", "timestamp"],
    "movies.csv": ["movieId", "title", "genres"],
}
_CSV_NAMES = dict(zip(RATING_COLUMNS, CSV_HEADERS["ratings.csv"], strict=True))


def _users_from_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.unique(ratings["user_id"].to_numpy())})


def _items_from_columns(item_id: np.ndarray, titles, genres) -> pd.DataFrame:
    """item_id, title, year (from the title's trailing '(YYYY)', else missing), genre names."""
    titles = pd.Series(titles, dtype="str").reset_index(drop=True)
    year = pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$", expand=False), errors="coerce")
    return pd.DataFrame(
        {
            "item_id": item_id,
            "title": titles,
            "year": year.astype("Int16"),
            "genres": [[] if s == NO_GENRES else [g for g in s.split("|") if g] for s in genres],
        }
    )


def _utf8_or_latin1(path: Path) -> str:
    """ML-10M's README names no encoding: read UTF-8, and a file that is not UTF-8 as latin-1."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def parse_ml10m(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """ML-10M (folder ml-10M100K): ratings.dat `UserID::MovieID::Rating::Timestamp` with half
    stars, movies.dat `MovieID::Title::Genres`; no users file."""
    ratings = parse_ratings(raw / "ratings.dat", "::", rating_range=HALF_STAR_RANGE)
    items_path = raw / "movies.dat"
    it = _read_table(items_path, "::", ["item_id", "title", "genres"], _utf8_or_latin1(items_path))
    items = _items_from_columns(
        _to_int(it, "item_id", items_path, np.int32), it["title"], it["genres"]
    )
    _check_unique(items, "item_id", items_path)
    return ratings, _users_from_ratings(ratings), items


def _check_csv_header(first_line: str, path: Path, file: str) -> None:
    """`file`: which of CSV_HEADERS `path` is."""
    expected = ",".join(CSV_HEADERS[file])
    got = first_line.lstrip("\ufeff").rstrip("\r\n")
    if got != expected:
        raise ParseError(
            f"{path}, line 1: header {got!r}, expected {expected!r}; the {file} of "
            "ML-20M/25M/32M starts with that line."
        )


def _csv_ints(frame: pd.DataFrame, column: str, path: Path, dtype, lines: np.ndarray):
    """Column of integer strings -> `dtype`, or ParseError naming the line (`lines[i]` is row
    i's line in the file) of the first value that is not an integer of that type."""
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce").to_numpy(np.float64)
    info = np.iinfo(dtype)
    bad = np.isnan(values) | (values % 1 != 0) | (values < info.min) | (values > info.max)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        name = _CSV_NAMES.get(column, column)
        raise ParseError(
            f"{path}, line {lines[i]}: {name} {frame[column].iloc[i]!r} is not an integer "
            f"({np.dtype(dtype).name})."
        )
    return values.astype(dtype)


def parse_ratings_csv(path: Path, *, rating_range=HALF_STAR_RANGE) -> pd.DataFrame:
    """ratings.csv of ML-20M/25M/32M -> user_id int32, item_id int32, rating float32, timestamp
    int64. Errors name the file and the line, counting the header as line 1."""
    with open(path, "rb") as f:
        _check_csv_header(f.readline().decode("utf-8", "replace"), path, "ratings.csv")
    lo, hi = rating_range
    read = {
        "sep": ",",
        "skiprows": 1,
        "header": None,
        "names": RATING_COLUMNS,
        "quoting": 3,  # no quotes in this file: a quoted number is an error, not a number
        "skip_blank_lines": False,  # a blank line is an error, not nothing
        "encoding": "latin-1",  # digits only; any other byte fails as a number, not as text
        "engine": "c",
    }
    try:  # fast path: typed columns straight from the C parser, which reads the file in
        # blocks (ML-32M: 32M rows, 877 MB), so the file is never held whole in memory
        dtype = dict(user_id=np.int32, item_id=np.int32, rating=np.float32, timestamp=np.int64)
        typed = pd.read_csv(path, dtype=dtype, **read)
        if typed.empty:
            raise pd.errors.EmptyDataError
        rating = typed["rating"].to_numpy()
        if not (np.isnan(rating) | (rating < lo) | (rating > hi)).any():
            return _check_duplicates(typed, path, first_line=2)
    except pd.errors.EmptyDataError:
        raise ParseError(f"{path}: no ratings after the header line.") from None
    except (ValueError, OverflowError, pd.errors.ParserError):
        pass
    # slow path, only for a malformed file: find and name the first bad line. The header has
    # 4 fields too, so the field count check numbers lines from the header as line 1.
    data = path.read_bytes().replace(b"\r\n", b"\n")
    _check_field_counts(data, b",", len(RATING_COLUMNS), path)
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, **read)
    lines = np.arange(2, len(frame) + 2)
    rating = _checked_ratings(frame["rating"], rating_range, path, first_line=2)
    ids = {c: _csv_ints(frame, c, path, np.int32, lines) for c in ("user_id", "item_id")}
    ts = _csv_ints(frame, "timestamp", path, np.int64, lines)
    out = pd.DataFrame({**ids, "rating": rating.astype(np.float32), "timestamp": ts})
    return _check_duplicates(out, path, first_line=2)


def parse_movies_csv(path: Path) -> pd.DataFrame:
    """movies.csv of ML-20M/25M/32M (RFC 4180: a title with a comma or a quote is quoted, its
    quotes doubled) -> item_id, title, year, genres. One Python step per movie (ML-32M: 87,585)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ParseError(f"{path}, line {line}: not UTF-8 text ({e.reason}).") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    ids, titles, genres, lines = [], [], [], []
    try:
        header = next(reader, None)
        _check_csv_header(",".join(header or []), path, "movies.csv")
        for row in reader:
            if len(row) != 3:
                raise ParseError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, expected 3 "
                    "(movieId,title,genres); a title that contains a comma must be quoted."
                )
            ids.append(row[0])
            titles.append(row[1])
            genres.append(row[2])
            lines.append(reader.line_num)
    except csv.Error as e:
        raise ParseError(f"{path}, line {reader.line_num}: {e}; fix the quoting.") from None
    frame = pd.DataFrame({"item_id": pd.Series(ids, dtype=object)})
    item_id = _csv_ints(frame, "item_id", path, np.int32, np.array(lines))
    items = _items_from_columns(item_id, titles, genres)
    dup = items["item_id"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(f"{path}, line {lines[i]}: movieId {item_id[i]} appears twice.")
    return items


def parse_ml20m(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """ML-20M, ML-25M and ML-32M (same formats): ratings.csv and movies.csv; no users file."""
    ratings = parse_ratings_csv(raw / "ratings.csv")
    items = parse_movies_csv(raw / "movies.csv")
    return ratings, _users_from_ratings(ratings), items


# no users file from ML-10M on: users come from the ratings
_CSV_FILES = {"ratings": "ratings.csv", "users": "ratings.csv", "items": "movies.csv"}
PARSERS: dict[str, tuple[Callable[[Path], tuple], dict[str, str]]] = {
    # name -> (parser, the raw files that ratings/users/items come from, for error messages)
    "ml-100k": (parse_ml100k, {"ratings": "u.data", "users": "u.user", "items": "u.item"}),
    "ml-1m": (parse_ml1m, {"ratings": "ratings.dat", "users": "users.dat", "items": "movies.dat"}),
    "ml-10m": (
        parse_ml10m,
        {"ratings": "ratings.dat", "users": "ratings.dat", "items": "movies.dat"},
    ),
    "ml-20m": (parse_ml20m, _CSV_FILES),
    "ml-25m": (parse_ml20m, _CSV_FILES),
    "ml-32m": (parse_ml20m, _CSV_FILES),
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
    if "age_bucket" in users:  # ml-10m and later have no demographics
        users["age_bucket"] = users["age_bucket"].map(AGE_BUCKETS)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    items["year_bucket"] = year_bucket(items["year"], single_years_from)
    items = items[["item_id", "title", "year", "year_bucket", "genres"]]
    return ratings.reset_index(drop=True), users, items
