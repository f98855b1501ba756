"""ML-10M, ML-20M, ML-25M and ML-32M: registry entries, parsers and the verified fetch, on small
synthetic files written in each release's exact format and zipped in its real layout."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfm.data import sources
from deepfm.data.movielens import (
    PARSERS,
    ParseError,
    parse_ml10m,
    parse_ml20m,
    parse_movies_csv,
    parse_ratings_csv,
)
from deepfm.data.sources import DATASETS, FetchError, fetch
from tests.conftest import REPO, make_zip, sha256_file

CSV_RELEASES = ["ml-20m", "ml-25m", "ml-32m"]
RELEASES = ["ml-10m", *CSV_RELEASES]


# --- synthetic files in the real formats -------------------------------------------------------


def make_ml10m_files(folder: Path) -> Path:
    """ratings.dat / movies.dat / tags.dat as in ml-10M100K: '::'-separated, no header, half
    stars; movies.dat is UTF-8 here (the README names no encoding)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(
        "1::122::5::838985046\n"
        "1::185::4.5::838983525\n"
        "1::231::3::838983392\n"
        "2::122::0.5::868245777\n"
        "2::8606::2.5::868245920\n"
        "5::185::4::868246000\n"
    )
    (folder / "movies.dat").write_bytes(
        "122::Boomerang (1992)::Comedy|Romance\n"
        "185::Net, The (1995)::Action|Crime|Thriller\n"
        "231::Dumb & Dumber (1994)::Comedy\n"
        "8606::Pull My Daisy (1958)::(no genres listed)\n"
        "9001::Cité des enfants perdus, La::Drama|IMAX\n".encode()
    )
    (folder / "tags.dat").write_text("15::4973::excellent!::1215184630\n")
    return folder


def make_csv_release_files(folder: Path, release: str) -> Path:
    """The CSV releases' files: RFC 4180, UTF-8, one header line each. A title with a comma is
    quoted and a quote inside it doubled; one title has no year, one movie no genres."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,1147880044\n"
        "1,11,3.5,1147868817\n"
        "1,4973,5.0,1147868828\n"
        "3,1,0.5,1439472215\n"
        "3,26587,4.5,1439472256\n"
        "3,208939,2.0,1573943619\n"
        "7,11,1.0,1112484676\n"
    )
    (folder / "movies.csv").write_bytes(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '4973,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",Comedy|Romance\n'
        '26587,"""Great Performances"" Cats (1998)",Musical\n'
        "208939,Klaus (2019),(no genres listed)\n"
        "40697,Babylon 5,Sci-Fi\n".encode()
    )
    (folder / "tags.csv").write_text(
        'userId,movieId,tag,timestamp\n3,1,"funny, clever",1439472290\n'
    )
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n11,0112346,9087\n")
    (folder / "README.txt").write_text(f"Summary\n=======\n\nThis dataset ({release}) ...\n")
    if release in ("ml-20m", "ml-25m"):
        (folder / "genome-tags.csv").write_text("tagId,tag\n1,007\n")
        (folder / "genome-scores.csv").write_text("movieId,tagId,relevance\n1,1,0.029\n")
    if release == "ml-32m":  # GroupLens' md5 of the data files ships inside the zip
        (folder / "checksums.txt").write_text(
            "".join(
                f"MD5 ({f}) = {md5_file(folder / f)}\n"
                for f in ("links.csv", "movies.csv", "ratings.csv", "tags.csv")
            )
        )
    return folder


def make_release_files(folder: Path, release: str) -> Path:
    if release == "ml-10m":
        return make_ml10m_files(folder)
    return make_csv_release_files(folder, release)


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def with_line(path: Path, number: int, line: str) -> None:
    """Replace line `number` (1-based) of a text file."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    lines[number - 1] = line
    path.write_bytes("".join(lines).encode())


def insert_line(path: Path, number: int, line: str) -> None:
    """Insert `line` so that it becomes line `number` (1-based)."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    lines.insert(number - 1, line)
    path.write_bytes("".join(lines).encode())


# --- parsers -----------------------------------------------------------------------------------


def test_ml10m_tables(tmp_path):
    ratings, users, items = parse_ml10m(make_ml10m_files(tmp_path / "ml-10M100K"))
    assert ratings.dtypes.tolist() == [np.int32, np.int32, np.float32, np.int64]
    assert ratings.iloc[0].tolist() == [1, 122, 5.0, 838985046]
    assert ratings.iloc[1].tolist() == [1, 185, 4.5, 838983525]  # half stars
    assert ratings.iloc[3].tolist() == [2, 122, 0.5, 868245777]  # the lowest rating
    assert len(ratings) == 6
    assert list(users.columns) == ["user_id"]  # no demographics in this release
    assert users["user_id"].dtype == np.int32
    assert users["user_id"].tolist() == [1, 2, 5]
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    assert items["item_id"].dtype == np.int32
    net = items.set_index("item_id").loc[185]
    assert (net["title"], net["year"], net["genres"]) == (
        "Net, The (1995)",
        1995,
        ["Action", "Crime", "Thriller"],
    )
    daisy = items.set_index("item_id").loc[8606]
    assert daisy["genres"] == [] and daisy["year"] == 1958  # "(no genres listed)" is none
    cite = items.set_index("item_id").loc[9001]
    assert cite["title"] == "Cité des enfants perdus, La"
    assert pd.isna(cite["year"]) and cite["genres"] == ["Drama", "IMAX"]


def test_ml10m_movies_that_are_not_utf8_are_read_as_latin1(tmp_path):
    folder = make_ml10m_files(tmp_path / "raw")
    (folder / "movies.dat").write_bytes("231::Café (1994)::Comedy\n".encode("latin-1"))
    (folder / "ratings.dat").write_text("1::231::3::838983392\n")
    _, _, items = parse_ml10m(folder)
    assert items["title"].tolist() == ["Café (1994)"]


@pytest.mark.parametrize("release", CSV_RELEASES)
def test_csv_release_tables(tmp_path, release):
    ratings, users, items = parse_ml20m(make_csv_release_files(tmp_path / release, release))
    assert ratings.dtypes.tolist() == [np.int32, np.int32, np.float32, np.int64]
    assert ratings.iloc[0].tolist() == [1, 1, 4.0, 1147880044]  # the header is not a rating
    assert ratings.iloc[3].tolist() == [3, 1, 0.5, 1439472215]
    assert ratings.iloc[4].tolist() == [3, 26587, 4.5, 1439472256]
    assert len(ratings) == 7
    assert list(users.columns) == ["user_id"] and users["user_id"].tolist() == [1, 3, 7]
    assert items["item_id"].tolist() == [1, 11, 4973, 26587, 208939, 40697]
    by_id = items.set_index("item_id")
    assert by_id.loc[11, "title"] == "American President, The (1995)"  # quoted, with a comma
    assert by_id.loc[11, "genres"] == ["Comedy", "Drama", "Romance"]
    assert by_id.loc[4973, "title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert by_id.loc[4973, "year"] == 2001
    assert by_id.loc[26587, "title"] == '"Great Performances" Cats (1998)'  # doubled quotes
    assert by_id.loc[26587, "year"] == 1998
    assert by_id.loc[208939, "genres"] == []  # "(no genres listed)"
    assert by_id.loc[208939, "year"] == 2019
    assert pd.isna(by_id.loc[40697, "year"])  # "Babylon 5" has no year
    assert by_id.loc[1, "genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


def test_csv_files_with_crlf_line_ends_parse_the_same(tmp_path):
    folder = make_csv_release_files(tmp_path / "raw", "ml-25m")
    expected = parse_ml20m(folder)
    for name in ("ratings.csv", "movies.csv"):
        path = folder / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    for got, want in zip(parse_ml20m(folder), expected, strict=True):
        pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1,11,3.5\n", r"ratings\.csv, line 3: 3 fields, expected 4"),
        ("1,11,3.5,1147868817,x\n", r"ratings\.csv, line 3: 5 fields, expected 4"),
        ("\n", r"ratings\.csv, line 3: 1 fields, expected 4"),
        ("1,11,good,1147868817\n", r"ratings\.csv, line 3: rating 'good' is not a number in "),
        ("1,11,0.0,1147868817\n", r"ratings\.csv, line 3: rating '0\.0' is not a number in "),
        ("1,11,5.5,1147868817\n", r"ratings\.csv, line 3: rating '5\.5' is not a number in "),
        ("1,11,,1147868817\n", r"ratings\.csv, line 3: rating '' is not a number in \[0\.5, 5\]"),
        ('1,11,"3.5",1147868817\n', r"ratings\.csv, line 3: rating '\"3\.5\"' is not a number"),
        ("1,x11,3.5,1147868817\n", r"ratings\.csv, line 3: movieId 'x11' is not an integer"),
        ("1.5,11,3.5,1147868817\n", r"ratings\.csv, line 3: userId '1\.5' is not an integer"),
        ("3000000000,11,3.5,1\n", r"ratings\.csv, line 3: userId '3000000000' is not an integer"),
        ("1,11,3.5,yesterday\n", r"ratings\.csv, line 3: timestamp 'yesterday' is not an integer"),
        ("1,1,3.5,1147868817\n", r"ratings\.csv, line 3: user 1 rates item 1 a second time"),
    ],
)
def test_malformed_ratings_csv_names_the_line_counting_the_header(tmp_path, line, message):
    folder = make_csv_release_files(tmp_path / "raw", "ml-32m")
    with_line(folder / "ratings.csv", 3, line)  # line 1 is the header, line 2 a good rating
    with pytest.raises(ParseError, match=message):
        parse_ml20m(folder)


def test_duplicate_rating_further_down_names_its_own_line(tmp_path):
    folder = make_csv_release_files(tmp_path / "raw", "ml-20m")
    insert_line(folder / "ratings.csv", 9, "3,26587,1.0,1439479999\n")  # 3 rated 26587 on line 6
    with pytest.raises(ParseError, match=r"line 9: user 3 rates item 26587 a second time"):
        parse_ratings_csv(folder / "ratings.csv")


@pytest.mark.parametrize(
    ("name", "header"),
    [("ratings.csv", "user,item,rating,time\n"), ("movies.csv", "movieId,title\n")],
)
def test_wrong_or_missing_header_is_line_1(tmp_path, name, header):
    folder = make_csv_release_files(tmp_path / "raw", "ml-25m")
    with_line(folder / name, 1, header)
    with pytest.raises(ParseError, match=rf"{name.replace('.', '[.]')}, line 1: header "):
        parse_ml20m(folder)
    # a file that starts with data and no header is refused the same way
    with_line(folder / name, 1, "1,2,3.5,4\n" if name == "ratings.csv" else "1,Heat (1995),Drama\n")
    with pytest.raises(ParseError, match=r"line 1: header .*expected '(userId|movieId),"):
        parse_ml20m(folder)


def test_ratings_csv_with_only_a_header(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(ParseError, match=r"ratings\.csv: no ratings after the header line"):
        parse_ratings_csv(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "11,American President, The (1995),Comedy\n",
            r"movies\.csv, line 3: 4 fields, expected 3 .*must be quoted",
        ),
        ("11,Heat (1995)\n", r"movies\.csv, line 3: 2 fields, expected 3"),
        ("\n", r"movies\.csv, line 3: 0 fields, expected 3"),
        ('11,"Heat" (1995),Drama\n', r"movies\.csv, line 3: .*fix the quoting"),
        ("eleven,Heat (1995),Drama\n", r"movies\.csv, line 3: movieId 'eleven' is not an integer"),
        ("1,Heat (1995),Drama\n", r"movies\.csv, line 3: movieId 1 appears twice"),
    ],
)
def test_malformed_movies_csv_names_the_line(tmp_path, line, message):
    folder = make_csv_release_files(tmp_path / "raw", "ml-20m")
    with_line(folder / "movies.csv", 3, line)
    with pytest.raises(ParseError, match=message):
        parse_movies_csv(folder / "movies.csv")


def test_movies_csv_that_is_not_utf8_names_the_line(tmp_path):
    folder = make_csv_release_files(tmp_path / "raw", "ml-32m")
    data = (folder / "movies.csv").read_bytes().replace("Amélie (".encode(), b"Am\xe9lie (")
    (folder / "movies.csv").write_bytes(data)
    with pytest.raises(ParseError, match=r"movies\.csv, line 4: not UTF-8 text"):
        parse_ml20m(folder)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "1::185::0::838983525\n",
            r"ratings\.dat, line 2: rating '0' is not a number in \[0\.5, 5\]",
        ),
        ("1::185::4.5\n", r"ratings\.dat, line 2: 3 fields, expected 4"),
        ("1::185::4.5::838983525::x\n", r"ratings\.dat, line 2: 5 fields, expected 4"),
        ("1::Net::4.5::838983525\n", r"ratings\.dat, line 2: item_id 'Net' is not an integer"),
        ("1::122::4.5::838983525\n", r"ratings\.dat, line 2: user 1 rates item 122 a second time"),
    ],
)
def test_malformed_ml10m_ratings_name_the_line(tmp_path, line, message):
    folder = make_ml10m_files(tmp_path / "raw")
    with_line(folder / "ratings.dat", 2, line)
    with pytest.raises(ParseError, match=message):
        parse_ml10m(folder)


def test_malformed_ml10m_movies_name_the_line(tmp_path):
    folder = make_ml10m_files(tmp_path / "raw")
    with_line(folder / "movies.dat", 4, "122::Boomerang again (1992)::Comedy\n")
    with pytest.raises(ParseError, match=r"movies\.dat, line 4: item_id 122 appears twice"):
        parse_ml10m(folder)
    with_line(folder / "movies.dat", 4, "8606::Pull My Daisy (1958)\n")
    with pytest.raises(ParseError, match=r"movies\.dat, line 4: 2 fields, expected 3"):
        parse_ml10m(folder)


# --- registry ----------------------------------------------------------------------------------


def test_every_release_is_registered_with_its_parser_and_files():
    for name in RELEASES:
        source = DATASETS[name]
        assert source.name == name
        assert source.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        parser, files = PARSERS[name]
        assert parser is (parse_ml10m if name == "ml-10m" else parse_ml20m)
        # every file the parser reads is a registered (hence verified) member
        assert set(files.values()) <= set(source.members)
    assert DATASETS["ml-10m"].folder == "ml-10M100K"
    assert [DATASETS[n].folder for n in CSV_RELEASES] == CSV_RELEASES


def test_registry_pins_only_checksums_that_were_found():
    # No member sha256 is published for these releases: none is recorded.
    for name in RELEASES:
        assert all(sha is None for sha in DATASETS[name].members.values())
    # ml-10m/20m/25m: the official archive's md5 (GroupLens' <zip>.md5) and sha256
    archives = {
        "ml-10m": ("813c411c", "ce571fd55effeba0271552578f2648bd"),
        "ml-20m": ("96f243c3", "cd245b17a1ae2cc31bb14903e1204af3"),
        "ml-25m": ("8b21cfb7", "6b51fb2759a8657d3bfcbfc42b592ada"),
    }
    for name, (sha_prefix, md5) in archives.items():
        source = DATASETS[name]
        assert source.archive_sha256.startswith(sha_prefix) and len(source.archive_sha256) == 64
        assert source.archive_md5 == md5
        assert source.member_md5 == {}
        assert source.unverified_members() == list(source.members)
        assert source.pinned == "archive sha256; archive md5 from GroupLens"
    # ml-32m: GroupLens' md5 of every member, so each member is verified on its own
    ml32m = DATASETS["ml-32m"]
    assert ml32m.member_md5 == {
        "ratings.csv": "cf12b74f9ad4b94a011f079e26d4270a",
        "movies.csv": "0df90835c19151f9d819d0822e190797",
        "tags.csv": "963bf4fa4de6b8901868fddd3eb54567",
        "links.csv": "8f033867bcb4e6be8792b21468b4fa6e",
    }
    assert ml32m.unverified_members() == []
    assert ml32m.archive_sha256 is None and ml32m.archive_md5 is None
    assert ml32m.pinned.startswith("member md5 from GroupLens (ratings.csv, movies.csv")
    assert DATASETS["ml-1m"].pinned == "member sha256"


# --- fetch through a mirror folder -------------------------------------------------------------


def mirror_zip(tmp_path: Path, release: str) -> tuple[Path, Path]:
    """Synthetic files zipped in the release's real layout into a fresh mirror folder."""
    files = make_release_files(tmp_path / "files", release)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_zip(files, mirror / f"{release}.zip", DATASETS[release].folder)
    return files, mirror


def zip_digests(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.mark.parametrize("release", RELEASES)
def test_real_entries_refuse_files_that_are_not_the_official_ones(tmp_path, release):
    _, mirror = mirror_zip(tmp_path, release)
    if release == "ml-32m":
        expected = r"checksum mismatch for ml-32m/\w+\.csv: md5 [0-9a-f]{32}, expected "
    else:
        expected = (
            rf"{release}'s member checksums are not recorded .*this file is not it: sha256 "
            rf".*record each member's sha256 .* in DATASETS\['{release}'\]\.members"
        )
    with pytest.raises(FetchError, match=expected):
        fetch(release, tmp_path / "raw", mirror=str(mirror))
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("release", ["ml-10m", "ml-20m", "ml-25m"])
def test_archive_checksums_verify_the_exact_zip_only(tmp_path, monkeypatch, release):
    files, mirror = mirror_zip(tmp_path, release)
    sha, md5 = zip_digests(mirror / f"{release}.zip")
    monkeypatch.setitem(
        DATASETS, release, replace(DATASETS[release], archive_sha256=sha, archive_md5=md5)
    )
    dest = fetch(release, tmp_path / "raw", mirror=str(mirror))
    # exactly the registered members are extracted, byte for byte, and they parse
    assert sorted(p.name for p in dest.iterdir()) == sorted(DATASETS[release].members)
    for member in DATASETS[release].members:
        assert (dest / member).read_bytes() == (files / member).read_bytes()
    ratings, _, _ = PARSERS[release][0](dest)
    assert len(ratings) == (6 if release == "ml-10m" else 7)

    # one altered rating: the zip is no longer the official one and is refused, and the old
    # output stays as it was
    ratings_file = "ratings.dat" if release == "ml-10m" else "ratings.csv"
    before = (dest / ratings_file).read_bytes()
    old, new = (b"::4.5::", b"::4::") if release == "ml-10m" else (b",3.5,", b",3.0,")
    (files / ratings_file).write_bytes(before.replace(old, new, 1))
    make_zip(files, mirror / f"{release}.zip", DATASETS[release].folder)
    with pytest.raises(FetchError, match=rf"{release}'s member checksums are not recorded"):
        fetch(release, tmp_path / "raw", mirror=str(mirror))
    assert (dest / ratings_file).read_bytes() == before


def test_with_archive_checksums_a_rezipped_copy_of_the_same_files_is_refused(tmp_path, monkeypatch):
    files, mirror = mirror_zip(tmp_path, "ml-20m")
    sha, md5 = zip_digests(mirror / "ml-20m.zip")
    monkeypatch.setitem(
        DATASETS, "ml-20m", replace(DATASETS["ml-20m"], archive_sha256=sha, archive_md5=md5)
    )
    with zipfile.ZipFile(mirror / "ml-20m.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(files.iterdir()):
            z.write(f, f"ml-20m/{f.name}")
    with pytest.raises(FetchError, match=r"not it: sha256 .*not a re-zipped copy"):
        fetch("ml-20m", tmp_path / "raw", mirror=str(mirror))


def test_md5_only_archive_checksum_is_checked_too(tmp_path, monkeypatch):
    _, mirror = mirror_zip(tmp_path, "ml-10m")
    monkeypatch.setitem(
        DATASETS, "ml-10m", replace(DATASETS["ml-10m"], archive_sha256=None, archive_md5="0" * 32)
    )
    with pytest.raises(FetchError, match=r"not it: md5 [0-9a-f]{32}, expected 0{32}"):
        fetch("ml-10m", tmp_path / "raw", mirror=str(mirror))


def test_nothing_recorded_means_refused(tmp_path, monkeypatch):
    _, mirror = mirror_zip(tmp_path, "ml-25m")
    monkeypatch.setitem(
        DATASETS, "ml-25m", replace(DATASETS["ml-25m"], archive_sha256=None, archive_md5=None)
    )
    assert DATASETS["ml-25m"].pinned == "nothing"
    with pytest.raises(
        FetchError,
        match=r"no checksum is recorded for ml-25m's members \(ml-25m/ratings\.csv, "
        r"ml-25m/movies\.csv\) nor for its archive, so the file cannot be verified and is "
        r"refused\. To accept other copies, record each member's sha256",
    ):
        fetch("ml-25m", tmp_path / "raw", mirror=str(mirror))
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("release", RELEASES)
def test_member_sha256_once_recorded_verifies_member_by_member(tmp_path, monkeypatch, release):
    files, mirror = mirror_zip(tmp_path, release)
    members = {m: sha256_file(files / m) for m in DATASETS[release].members}
    source = replace(DATASETS[release], members=members, archive_sha256=None, archive_md5=None)
    monkeypatch.setitem(DATASETS, release, replace(source, member_md5={}))
    assert DATASETS[release].pinned == "member sha256"
    dest = fetch(release, tmp_path / "raw", mirror=str(mirror))  # a rebuilt zip passes
    assert sorted(p.name for p in dest.iterdir()) == sorted(members)
    movies = "movies.dat" if release == "ml-10m" else "movies.csv"
    (files / movies).write_bytes((files / movies).read_bytes() + b"9,Extra (2000),Drama\n")
    make_zip(files, mirror / f"{release}.zip", DATASETS[release].folder)
    folder = DATASETS[release].folder
    with pytest.raises(FetchError, match=rf"checksum mismatch for {folder}/{movies}: sha256 "):
        fetch(release, tmp_path / "raw", mirror=str(mirror))


def test_ml32m_member_md5_verifies_each_member_and_a_rezipped_copy_passes(tmp_path, monkeypatch):
    files, mirror = mirror_zip(tmp_path, "ml-32m")
    md5s = {m: md5_file(files / m) for m in DATASETS["ml-32m"].members}
    monkeypatch.setitem(DATASETS, "ml-32m", replace(DATASETS["ml-32m"], member_md5=md5s))
    computed = sources.verify_and_extract(mirror / "ml-32m.zip", DATASETS["ml-32m"], tmp_path / "a")
    assert computed == {m: sha256_file(files / m) for m in md5s}  # ready to be recorded
    with zipfile.ZipFile(mirror / "ml-32m.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(files.iterdir()):  # another zip of the same files
            z.write(f, f"ml-32m/{f.name}")
    dest = fetch("ml-32m", tmp_path / "raw", mirror=str(mirror))
    assert sorted(p.name for p in dest.iterdir()) == sorted(md5s)
    assert not (dest / "checksums.txt").exists() and not (dest / "README.txt").exists()
    ratings, users, items = parse_ml20m(dest)
    assert len(ratings) == 7 and len(users) == 3 and len(items) == 6

    with_line(files / "tags.csv", 2, "3,1,boring,1439472290\n")
    make_zip(files, mirror / "ml-32m.zip", "ml-32m")
    with pytest.raises(FetchError, match=r"checksum mismatch for ml-32m/tags\.csv: md5 "):
        fetch("ml-32m", tmp_path / "raw", mirror=str(mirror))
    assert (dest / "tags.csv").read_bytes() == (tmp_path / "a" / "tags.csv").read_bytes()


def test_ml10m_zip_must_hold_the_ml_10M100K_folder(tmp_path, monkeypatch):
    files = make_ml10m_files(tmp_path / "files")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_zip(files, mirror / "ml-10m.zip", "ml-10m")  # named after the release: wrong
    sha, md5 = zip_digests(mirror / "ml-10m.zip")
    monkeypatch.setitem(
        DATASETS, "ml-10m", replace(DATASETS["ml-10m"], archive_sha256=sha, archive_md5=md5)
    )
    with pytest.raises(FetchError, match=r"lacks ml-10M100K/ratings\.dat, ml-10M100K/movies\.dat"):
        fetch("ml-10m", tmp_path / "raw", mirror=str(mirror))


@pytest.mark.parametrize("release", ["ml-10m", "ml-20m", "ml-25m", "ml-32m"])
def test_each_release_preprocesses_and_splits_with_its_declared_fields(tmp_path, release):
    """params.yaml declares ids, year_bucket and genres for the releases without user
    demographics; the canonical tables must hold exactly those, and the split encodes them."""
    from deepfm.config import load_config
    from deepfm.data.canonical import canonical_tables
    from deepfm.data.splitting import split_dataset

    spec = load_config(REPO / "params.yaml").datasets[release]
    folder = make_release_files(tmp_path / release, release)
    interactions, users, items = canonical_tables(spec, folder)
    assert list(users.columns) == ["user_id"]
    assert list(items.columns) == ["item_id", "title", "year", "year_bucket", "genres"]
    assert interactions["label"].tolist() == (interactions["rating"] >= 4).astype(int).tolist()
    split = split_dataset(
        interactions, users, items, fields=spec.fields, seed=0, min_positives=2, num_negatives=3
    )
    assert [f.name for f in split.schema.fields] == ["user_id", "item_id", "year_bucket", "genres"]
    assert split.features["item_genres"].shape[0] == len(items)
