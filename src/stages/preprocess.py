"""Stage preprocess: raw files -> canonical parquet tables (interactions, users, items).

A click log (criteo, avazu) is streamed chunk by chunk, so its size is bounded by disk, not
memory."""

from pathlib import Path

from deepfm.config import load_config
from deepfm.data.canonical import canonical_tables, stream_click_log_tables
from deepfm.io import atomic_dir, write_parquet
from deepfm.utils import run_stage


def main(raw: Path, processed: Path) -> None:
    cfg = load_config()
    spec = cfg.dataset_spec
    with atomic_dir(processed) as tmp:
        if spec.protocol == "ctr" and spec.source != "local":
            rows = stream_click_log_tables(spec, raw, tmp)
            print(f"preprocess: {rows:,} rows of {spec.source} -> {processed}")
            return
        interactions, users, items = canonical_tables(spec, raw)
        write_parquet(tmp / "interactions.parquet", interactions)
        write_parquet(tmp / "users.parquet", users)
        write_parquet(tmp / "items.parquet", items)
    print(
        f"preprocess: {len(interactions):,} interactions ({int(interactions.label.sum()):,} "
        f"positives), {len(users):,} users, {len(items):,} items -> {processed}"
    )


if __name__ == "__main__":
    run_stage(main, "raw", "processed")
