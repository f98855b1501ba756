import numpy as np
import pandas as pd
import pytest

from deepfm.data.movielens import ParseError, age_bucket, load_canonical, year_bucket
from tests.conftest import make_ml1m_files


def test_ml100k_canonical_tables(canonical, ml100k_dir):
    interactions, users, items = canonical
    raw = np.loadtxt(ml100k_dir / "u.data", dtype=np.int64)
    assert len(interactions) == len(raw)
    assert list(interactions.columns) == ["user_id", "item_id", "rating", "timestamp", "label"]
    np.testing.assert_array_equal(interactions["label"], (interactions["rating"] >= 4).astype(int))
    # canonical order: by user, then time, then item
    keys = interactions[["user_id", "timestamp", "item_id"]].to_numpy()
    assert (np.diff(keys[:, 0]) >= 0).all()
    assert list(users.columns) == ["user_id", "gender", "age_bucket", "occupation", "zip_prefix"]
    assert set(users["age_bucket"]) <= {
        "Under 18",
        "18-24",
        "25-34",
        "35-44",
        "45-49",
        "50-55",
        "56+",
    }
    assert users.loc[users.user_id == 2, "zip_prefix"].item() == "other"  # 'T8H1N' is not numeric
    assert users.loc[users.user_id == 1, "zip_prefix"].item() == "9"
    assert items.loc[items.item_id == 3, "title"].item() == "Café Noir (1995)"  # latin-1
    assert items.loc[items.item_id == 7, "year_bucket"].isna().item()  # no release date
    assert all(isinstance(g, (list, np.ndarray)) for g in items["genres"])


def test_age_buckets_match_ml1m_bins():
    ages = np.array([7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73])
    assert age_bucket(ages).tolist() == [1, 1, 18, 18, 25, 25, 35, 35, 45, 45, 50, 50, 56, 56]


def test_ml1m_format(tmp_path):
    folder = make_ml1m_files(tmp_path / "ml-1m")
    interactions, users, items = load_canonical("ml-1m", folder, 4, 1980)
    assert len(interactions) == len((folder / "ratings.dat").read_text().splitlines())
    assert users["occupation"].iloc[0] == "academic/educator"  # code 1
    assert users["age_bucket"].iloc[0] == "18-24"  # code 18
    assert items.loc[items.item_id == 1, "genres"].item() == ["Action", "Comedy"]
    assert items.loc[items.item_id == 1, "year"].item() == 1951
    assert items.loc[items.item_id == 1, "year_bucket"].item() == "1950s"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\t2\t3\n", r"u\.data, line 3: 3 fields, expected 4"),
        ("1\t2\t3\t4\t5\n", r"u\.data, line 3: 5 fields, expected 4"),
        ("1\t2\tfive\t881250949\n", r"u\.data, line 3: rating 'five' is not a number in \[1, 5\]"),
        ("1\t2\t9\t881250949\n", r"u\.data, line 3: rating '9' is not a number in \[1, 5\]"),
        ("1\tx\t3\t881250949\n", r"u\.data, line 3: item_id 'x' is not an integer"),
        ("999\t2\t3\t881250949\n", r"u\.data, line 3: user_id 999 is not in the users file"),
        ("1\t999\t3\t881250949\n", r"u\.data, line 3: item_id 999 is not in the items file"),
        ("\n", r"u\.data, line 3: 1 fields, expected 4"),
    ],
)
def test_malformed_ratings_name_file_and_line(tmp_path, line, message):
    from tests.conftest import make_ml100k_files

    folder = make_ml100k_files(tmp_path / "raw", n_users=5, n_items=10, per_user=(1, 1))
    rows = (folder / "u.data").read_text().splitlines(keepends=True)
    # keep user ids valid on the first two lines; line 3 is the bad one
    (folder / "u.data").write_text("".join(rows[:2]) + line + "".join(rows[3:]))
    with pytest.raises(ParseError, match=message):
        load_canonical("ml-100k", folder, 4, 1980)


def test_missing_raw_file_says_run_fetch(tmp_path):
    with pytest.raises(ParseError, match="run the fetch stage"):
        load_canonical("ml-100k", tmp_path, 4, 1980)


def test_duplicate_rating_names_the_line(tmp_path):
    from tests.conftest import make_ml100k_files

    folder = make_ml100k_files(tmp_path / "raw", n_users=5, n_items=10, per_user=(2, 2))
    rows = (folder / "u.data").read_text().splitlines(keepends=True)
    (folder / "u.data").write_text("".join(rows[:2]) + rows[0] + "".join(rows[2:]))
    with pytest.raises(ParseError, match=r"u\.data, line 3: user 1 rates item \d+ a second time"):
        load_canonical("ml-100k", folder, 4, 1980)


def test_year_buckets_single_years_then_decades():
    years = pd.Series([1995, 1980, 1979, None, 1932, 2000], dtype="Int16")
    assert year_bucket(years, 1980).tolist() == ["1995", "1980", "1970s", pd.NA, "1930s", "2000"]
    # a cut-off above every year gives decades only
    assert year_bucket(years, 2100).tolist()[:3] == ["1990s", "1980s", "1970s"]


def test_ml100k_genre_flags_decode_to_their_own_names(canonical, ml100k_dir):
    from tests.conftest import GENRES

    _, _, items = canonical
    lines = (ml100k_dir / "u.item").read_bytes().decode("latin-1").splitlines()
    expected = {}
    for line in lines:
        fields = line.split("|")
        flags = fields[5:]  # after id, title, release date, video date, url
        assert len(flags) == len(GENRES)
        expected[int(fields[0])] = [g for g, f in zip(GENRES, flags, strict=True) if f == "1"]
    got = {int(i): list(g) for i, g in zip(items["item_id"], items["genres"], strict=True)}
    assert got == expected
    assert sum(len(g) >= 2 for g in got.values()) >= 10  # several flags per item decode too
