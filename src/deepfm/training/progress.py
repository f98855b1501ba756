"""What training reports as it goes: dvclive curves (deterministic, tracked in dvc.lock),
wall-clock timings (a measurement, kept out of dvc.lock) and a line per epoch on a terminal."""

from __future__ import annotations

import math

from tqdm import tqdm


def log_row(live, row: dict) -> None:
    """One step of curves: every finite float of `row`, rounded, then the next step."""
    if live is None:
        return
    for key, value in row.items():
        if isinstance(value, float) and math.isfinite(value):
            live.log_metric(key, round(value, 6))
    live.next_step()


def log_timing(timing_live, train_seconds: float, val_seconds: float | None) -> None:
    if timing_live is None:
        return
    timing_live.log_metric("train/seconds_per_epoch", round(train_seconds, 3))
    if val_seconds is not None:
        timing_live.log_metric("val/seconds", round(val_seconds, 3))
    timing_live.next_step()


def print_epoch(
    epoch: int, loss: float, seconds: float, val: dict, monitor: str, curve_k: int
) -> None:
    shown = f"  val {monitor} {val[monitor]:.4f}" if val else ""
    for key in (f"hr@{curve_k}", "auc"):
        if key in val and key != monitor:
            shown += f"  {key} {val[key]:.4f}"
    tqdm.write(f"epoch {epoch}: loss {loss:.4f}{shown}  ({seconds:.1f}s)")
