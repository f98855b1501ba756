import zipfile

import pytest

from deepfm.data import sources
from deepfm.data.sources import DatasetSource, FetchError, fetch, verify_and_extract
from tests.conftest import make_ml100k_files, make_zip, sha256_file


@pytest.fixture
def synthetic_source(tmp_path, monkeypatch):
    folder = make_ml100k_files(tmp_path / "files", n_users=5, n_items=8, per_user=(2, 3))
    members = {f.name: sha256_file(f) for f in sorted(folder.iterdir())}
    source = DatasetSource("ml-100k", "https://example.invalid/ml-100k.zip", "ml-100k", members)
    monkeypatch.setitem(sources.DATASETS, "ml-100k", source)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_zip(folder, mirror / "ml-100k.zip", "ml-100k")
    return source, folder, mirror


def test_mirror_fetch_verifies_and_extracts(synthetic_source, tmp_path):
    source, folder, mirror = synthetic_source
    dest = fetch("ml-100k", tmp_path / "raw", mirror=str(mirror))
    assert sorted(p.name for p in dest.iterdir()) == sorted(source.members)
    assert (dest / "u.data").read_bytes() == (folder / "u.data").read_bytes()


def test_env_variable_names_the_mirror(synthetic_source, tmp_path, monkeypatch):
    _, _, mirror = synthetic_source
    monkeypatch.setenv(sources.MIRROR_ENV, str(mirror))
    assert (fetch("ml-100k", tmp_path / "raw") / "u.user").is_file()


def test_checksum_mismatch_is_an_error_and_keeps_old_output(synthetic_source, tmp_path):
    source, folder, mirror = synthetic_source
    dest = fetch("ml-100k", tmp_path / "raw", mirror=str(mirror))
    before = (dest / "u.data").read_bytes()
    (folder / "u.data").write_text("1\t1\t5\t881250949\n")
    make_zip(folder, mirror / "ml-100k.zip", "ml-100k")
    with pytest.raises(FetchError, match=r"checksum mismatch for ml-100k/u\.data"):
        fetch("ml-100k", tmp_path / "raw", mirror=str(mirror))
    assert (dest / "u.data").read_bytes() == before  # nothing half-written
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(source.members)


def test_missing_member(synthetic_source, tmp_path):
    _, folder, mirror = synthetic_source
    (folder / "u.item").unlink()
    make_zip(folder, mirror / "ml-100k.zip", "ml-100k")
    with pytest.raises(FetchError, match=r"lacks ml-100k/u\.item"):
        fetch("ml-100k", tmp_path / "raw", mirror=str(mirror))
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("bad_name", ["/etc/passwd", "ml-100k/../../evil", "..\\evil"])
def test_unsafe_member_paths_are_rejected(synthetic_source, tmp_path, bad_name):
    _, folder, mirror = synthetic_source
    make_zip(folder, mirror / "ml-100k.zip", "ml-100k", extra={bad_name: b"x"})
    with pytest.raises(FetchError, match="unsafe member path"):
        fetch("ml-100k", tmp_path / "raw", mirror=str(mirror))
    assert not (tmp_path / "raw").exists()


def test_truncated_zip(synthetic_source, tmp_path):
    _, _, mirror = synthetic_source
    data = (mirror / "ml-100k.zip").read_bytes()
    (mirror / "ml-100k.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(FetchError, match="corrupt or truncated"):
        fetch("ml-100k", tmp_path / "raw", mirror=str(mirror))


def test_corrupt_member_data(synthetic_source, tmp_path):
    source, _, mirror = synthetic_source
    path = mirror / "ml-100k.zip"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("ml-100k/u.data")
    start = info.header_offset + 30 + len(info.filename) + 5
    raw[start] ^= 0xFF  # flip a byte inside the stored data
    path.write_bytes(bytes(raw))
    with pytest.raises(FetchError, match=r"(checksum mismatch|cannot be read).*u\.data"):
        verify_and_extract(path, source, tmp_path / "raw")


def test_mirror_without_zip(tmp_path):
    with pytest.raises(FetchError, match=r"MOVIELENS_MIRROR=.* does not exist.*or unset"):
        fetch("ml-100k", tmp_path / "raw", mirror=str(tmp_path))


def test_no_network_and_no_mirror_names_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)

    def offline(*args, **kwargs):
        raise sources.urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    with pytest.raises(
        FetchError, match=r"after 3 tries.*connect to the internet.*MOVIELENS_MIRROR"
    ):
        fetch("ml-100k", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert not list(tmp_path.glob("*.download"))


def test_unknown_dataset():
    with pytest.raises(
        FetchError,
        match=r"unknown dataset 'ml-latest'; registered: ml-100k, ml-10m, ml-1m, ml-20m, ml-25m, "
        r"ml-32m\.",
    ):
        fetch("ml-latest", None)


def test_registry_has_official_checksums():
    assert sources.DATASETS["ml-100k"].members["u.data"].startswith("06416e59")
    assert sources.DATASETS["ml-1m"].members["ratings.dat"].startswith("506d64ca")
