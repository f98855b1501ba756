"""What training reports as it goes: dvclive curves (deterministic, tracked in dvc.lock),
wall-clock timings (a measurement, kept out of dvc.lock) and what a person reads as it runs:
a bar on a terminal, one line per epoch in a log (EpochProgress)."""

from __future__ import annotations

import math
import sys

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


def format_duration(seconds: float) -> str:
    """12.3 -> '12s', 754 -> '12m 34s', 7290 -> '2h 01m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def epoch_line(
    epoch: int,
    epochs: int,
    loss: float,
    seconds: float,
    val: dict,
    monitor: str,
    curve_k: int,
    eta: float | None,
) -> str:
    """One epoch as a line: train loss, the validation monitor (and HR@k, AUC) when it was
    validated, the epoch's seconds (training and validation) and the time left to the last
    epoch (`train.epochs`; early stopping can end sooner)."""
    shown = f"  val {monitor} {val[monitor]:.4f}" if val else ""
    for key in (f"hr@{curve_k}", "auc"):
        if key in val and key != monitor:
            shown += f"  {key} {val[key]:.4f}"
    left = f"  ETA {format_duration(eta)}" if eta is not None and epoch < epochs else ""
    return f"epoch {epoch}/{epochs}: loss {loss:.4f}{shown}  {seconds:.1f}s{left}"


class EpochProgress:
    """What a person sees while training runs, by `mode`:

    - "bar": a tqdm bar over each epoch's batches and a line per epoch (a terminal);
    - "lines": a plain line per epoch, flushed at once (a file or a pipe: CI logs,
      `dvc queue logs`), where a bar's carriage returns would pile up or show nothing;
    - "off": nothing.

    The default ("auto") is "bar" when `stream` (stderr) is a terminal, else "lines". It only
    reads clocks: no number that training produces depends on it.
    """

    def __init__(self, mode: str, epochs: int, stream=None):
        self.stream = sys.stderr if stream is None else stream
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode {mode!r}: one of auto, bar, lines, off")
        self.mode, self.epochs = mode, epochs
        self.seconds: list[float] = []  # this process's epochs, wall clock incl. validation

    def batches(self, iterable, epoch: int):
        if self.mode != "bar":
            return iterable
        return tqdm(iterable, desc=f"epoch {epoch}", leave=False, file=self.stream)

    def epoch_done(
        self, epoch: int, loss: float, seconds: float, val: dict, monitor: str, curve_k: int
    ) -> None:
        self.seconds.append(seconds)
        if self.mode == "off":
            return
        eta = sum(self.seconds) / len(self.seconds) * (self.epochs - epoch)
        line = epoch_line(epoch, self.epochs, loss, seconds, val, monitor, curve_k, eta)
        if self.mode == "bar":
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
