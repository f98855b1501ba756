"""A model's own `history_length`: reading the n most recent of the items a longer split
stores is the same run, bit for bit, as a split that stores n (Schema.reading_history), so
each model's validated history length can be its default while every model shares one split.
"""

from __future__ import annotations

import pytest

from deepfm.config import ConfigError, parse_config
from deepfm.data.schema import Schema
from tests.test_causal import CASES, _run, _same

READERS = sorted(case for case in CASES if "history_length" in CASES[case])


def _config(case: str, stored: int, reads: int):
    model = case.split("+")[0]
    train_params = {"epochs": 2, "min_epochs": 2, "val_every": 1, "batch_size": 64,
                    "num_threads": 1}  # fmt: skip
    return parse_config({
        "seed": 5, "model": model, model: {**CASES[case], "history_length": reads},
        "train": train_params,
        "split": {"history_length": stored, "sequence": "rated", "cut": "causal"},
    })  # fmt: skip


def test_every_model_that_reads_the_history_can_read_less_of_it():
    assert {c.split("+")[0] for c in READERS} == {
        "deepfm", "xdeepfm", "attention_deepfm", "fm", "lr", "sasrec"
    }  # fmt: skip


@pytest.mark.parametrize("case", READERS)
def test_reading_fewer_items_of_a_longer_split_is_the_shorter_split(canonical, tmp_path, case):
    interactions, users, items = canonical
    shorter = _run(_config(case, 3, 0), interactions, users, items, tmp_path / "a")
    longer = _run(_config(case, 6, 3), interactions, users, items, tmp_path / "b")
    assert _same(shorter, longer, "val") and _same(shorter, longer, "test")
    whole = _run(_config(case, 6, 0), interactions, users, items, tmp_path / "c")
    assert not (_same(whole, longer, "val") and _same(whole, longer, "test"))  # it has teeth


def test_a_model_cannot_read_more_than_the_split_holds():
    with pytest.raises(ConfigError, match=r"raise split.history_length to at least 7"):
        _config("deepfm", 6, 7)
    schema = Schema.from_dict(
        {"num_users": 2, "num_items": 3, "fields": [
            {"name": "history", "source": "user", "kind": "sequence", "vocab_size": 4,
             "column": 0, "length": 6},
        ]}
    )  # fmt: skip
    assert schema.reading_history(0) is schema and schema.reading_history(6) is schema
    assert schema.reading_history(2).field("history").length == 2
    with pytest.raises(ValueError, match=r"raise split.history_length to 7"):
        schema.reading_history(7)
