"""Stage preprocess: data/raw/ -> canonical parquet tables in data/processed/."""

from pathlib import Path

from deepfm.config import load_config
from deepfm.data.movielens import load_canonical
from deepfm.io import atomic_dir, write_parquet
from deepfm.utils import run_stage

RAW, PROCESSED = Path("data/raw"), Path("data/processed")


def main() -> None:
    cfg = load_config()
    interactions, users, items = load_canonical(
        cfg.dataset, RAW, cfg.data.label_threshold, cfg.data.single_years_from
    )
    with atomic_dir(PROCESSED) as tmp:
        write_parquet(tmp / "interactions.parquet", interactions)
        write_parquet(tmp / "users.parquet", users)
        write_parquet(tmp / "items.parquet", items)
    print(
        f"preprocess: {len(interactions):,} interactions ({int(interactions.label.sum()):,} "
        f"positives), {len(users):,} users, {len(items):,} items -> {PROCESSED}"
    )


if __name__ == "__main__":
    run_stage(main)
