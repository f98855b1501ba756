"""What a person reads while training runs: a bar on a terminal, one plain line per epoch in a
log (a file, a pipe, `dvc queue logs`), and never a change to any number training produces."""

from __future__ import annotations

import io

import pytest
import torch

from deepfm.config import parse_config
from deepfm.io import load_checkpoint
from deepfm.training.loop import train
from deepfm.training.progress import EpochProgress, epoch_line, format_duration
from tests.conftest import Recorder


class Terminal(io.StringIO):
    def isatty(self):
        return True


DURATIONS = [(0.4, "0s"), (12.6, "13s"), (60, "1m 00s"), (754, "12m 34s"), (7290, "2h 01m")]


@pytest.mark.parametrize(("seconds", "text"), DURATIONS)
def test_durations_read_as_a_person_would(seconds, text):
    assert format_duration(seconds) == text


def test_a_line_per_epoch_with_the_monitor_seconds_and_eta():
    stream = io.StringIO()
    report = EpochProgress("auto", epochs=4, stream=stream)  # not a terminal: lines
    assert report.mode == "lines"
    batches = [1, 2, 3]
    assert report.batches(batches, 1) is batches  # no bar
    val = {"full_ndcg@10": 0.12345, "hr@10": 0.25, "auc": 0.9, "users": 7}
    report.epoch_done(1, 0.5, 10.0, {}, "full_ndcg@10", 10)
    report.epoch_done(2, 0.25, 20.0, val, "full_ndcg@10", 10)
    report.epoch_done(4, 0.125, 30.0, val, "auc", 10)
    assert stream.getvalue().splitlines() == [
        "epoch 1/4: loss 0.5000  10.0s  ETA 30s",  # 10 s per epoch so far, 3 epochs left
        "epoch 2/4: loss 0.2500  val full_ndcg@10 0.1235  hr@10 0.2500  auc 0.9000  20.0s  "
        "ETA 30s",  # (10 + 20) / 2 * 2
        "epoch 4/4: loss 0.1250  val auc 0.9000  hr@10 0.2500  30.0s",  # the last: no ETA
    ]
    assert epoch_line(3, 4, 1.0, 1.0, {}, "auc", 10, None) == "epoch 3/4: loss 1.0000  1.0s"


def test_a_terminal_gets_a_bar_and_off_prints_nothing():
    terminal = Terminal()
    report = EpochProgress("auto", epochs=2, stream=terminal)
    assert report.mode == "bar"
    assert list(report.batches(iter([1, 2]), 1)) == [1, 2]
    report.epoch_done(1, 0.5, 1.0, {}, "auc", 10)
    assert "epoch 1/2: loss 0.5000  1.0s  ETA 1s" in terminal.getvalue()
    quiet = io.StringIO()
    off = EpochProgress("off", epochs=2, stream=quiet)
    off.epoch_done(1, 0.5, 1.0, {}, "auc", 10)
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        EpochProgress("loud", epochs=2)


def _cfg():
    return parse_config(
        {
            "seed": 3,
            "train": {
                **{"epochs": 3, "min_epochs": 1, "batch_size": 64},
                **{"num_threads": 1, "val_every": 2},
            },
            "deepfm": {"embed_dim": 4, "dnn_hidden": [8]},
        }
    )


def test_training_into_a_log_prints_a_line_per_epoch_same_numbers(split, tmp_path, capsys):
    live = Recorder()
    train(_cfg(), split, tmp_path / "lines.pt", live=live)  # stderr is captured: not a terminal
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    for epoch, (line, row) in enumerate(zip(lines, live.rows, strict=True), start=1):
        assert line.startswith(f"epoch {epoch}/3: loss {row['train/loss']:.4f}  ")
        validated = epoch in (2, 3)  # val_every 2, and the last epoch
        assert ("val full_ndcg@10" in line) == validated
        if validated:
            assert f"val full_ndcg@10 {row['val/full_ndcg@10']:.4f}" in line
        assert ("ETA" in line) == (epoch < 3)
    quiet = Recorder()
    train(_cfg(), split, tmp_path / "off.pt", live=quiet, progress=False)
    assert capsys.readouterr().err == ""
    assert quiet.rows == live.rows  # the same curves, number for number
    a = load_checkpoint(tmp_path / "lines.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "off.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
