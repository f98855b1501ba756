"""Dataset registry and the fetch logic: official URL, member checksums, safe extraction.

The GroupLens archives are verified member by member (not as whole archives) so a rebuilt
mirror zip with the same files passes and a single altered file fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deepfm.io import atomic_dir, atomic_path

MIRROR_ENV = "MOVIELENS_MIRROR"


class FetchError(RuntimeError):
    """The dataset could not be obtained or failed verification."""


@dataclass(frozen=True)
class DatasetSource:
    name: str
    url: str
    folder: str  # the folder inside the zip that holds the members
    members: dict[str, str]  # file name inside `folder` -> sha256
    citation: str = (
        "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and "
        "Context. ACM TiiS 5(4). https://doi.org/10.1145/2827872"
    )


DATASETS: dict[str, DatasetSource] = {
    "ml-100k": DatasetSource(
        name="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        folder="ml-100k",
        members={
            "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
            "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        },
    ),
    "ml-1m": DatasetSource(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        folder="ml-1m",
        members={
            "ratings.dat": "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f",
            "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
            "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
        },
    ),
}


def get_source(name: str) -> DatasetSource:
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def sha256_of(stream, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := stream.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, *, timeout: float = 60.0, retries: int = 3) -> None:
    """Download `url` to `dest` atomically, retrying transient failures with backoff."""
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            with (
                urllib.request.urlopen(url, timeout=timeout) as response,
                atomic_path(dest) as tmp,
                open(tmp, "wb") as out,
            ):
                shutil.copyfileobj(response, out, 1 << 20)
            return
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            last_error = e
            if attempt < retries:
                time.sleep(2 ** (attempt - 1))
    raise FetchError(
        f"could not download {url} after {retries} tries ({last_error}). Either connect to the "
        f"internet, or download the zip elsewhere and point {MIRROR_ENV} at the folder that holds "
        f"it: export {MIRROR_ENV}=/path/to/folder (the folder must contain {Path(url).name})."
    )


def _check_member_name(name: str, zip_path: Path) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (name[1:2] == ":"):
        raise FetchError(
            f"{zip_path}: refusing to extract unsafe member path {name!r} (absolute or with '..'). "
            "The archive is not a genuine MovieLens zip: delete it and fetch it again."
        )


def verify_and_extract(zip_path: Path, source: DatasetSource, dest: Path) -> dict[str, str]:
    """Check every registered member's sha256 and extract exactly those members to `dest`.

    `dest` is replaced atomically: on any failure it is left as it was.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(
            f"{zip_path} is not a readable zip archive ({e}); it is corrupt or truncated. "
            "Delete it and download it again."
        ) from None
    with archive:
        names = archive.namelist()
        for name in names:
            _check_member_name(name, zip_path)
        present = set(names)
        missing = [m for m in source.members if f"{source.folder}/{m}" not in present]
        if missing:
            raise FetchError(
                f"{zip_path} lacks {', '.join(f'{source.folder}/{m}' for m in missing)}; "
                f"it is not the {source.name} archive. Download it again from {source.url}."
            )
        with atomic_dir(dest) as tmp:
            for member, expected in source.members.items():
                target = tmp / member
                try:
                    with (
                        archive.open(f"{source.folder}/{member}") as src,
                        open(target, "wb") as out,
                    ):
                        shutil.copyfileobj(src, out, 1 << 20)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise FetchError(
                        f"{zip_path}: member {source.folder}/{member} cannot be read ({e}); the "
                        "archive is corrupt or truncated. Delete it and download it again."
                    ) from None
                with open(target, "rb") as f:
                    actual = sha256_of(f)
                if actual != expected:
                    raise FetchError(
                        f"{zip_path}: checksum mismatch for {source.folder}/{member}: sha256 "
                        f"{actual}, expected {expected}. The file is corrupt or not the official "
                        f"release; download the archive again from {source.url}."
                    )
    return dict(source.members)


def fetch(name: str, dest: Path, *, mirror: str | None = None, timeout: float = 60.0) -> Path:
    """Obtain dataset `name` into the folder `dest` (replaced whole), verified. Returns `dest`.

    With `mirror` (or $MOVIELENS_MIRROR) set, `<mirror>/<name>.zip` is used instead of the
    network; the same member checksums apply.
    """
    source = get_source(name)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if mirror:
        zip_path = Path(mirror) / f"{name}.zip"
        if not zip_path.is_file():
            raise FetchError(
                f"{MIRROR_ENV}={mirror} is set but {zip_path} does not exist. Put the official "
                f"{name}.zip ({source.url}) in that folder, or unset {MIRROR_ENV} to download it."
            )
        verify_and_extract(zip_path, source, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    zip_path = dest.parent / f".{name}.zip.download"
    try:
        download(source.url, zip_path, timeout=timeout)
        verify_and_extract(zip_path, source, dest)
    finally:
        zip_path.unlink(missing_ok=True)
    return dest
