"""Each registry entry has everything the registry needs (README: "Add a model", "Add a
metric"): a model that lacks its module, its class, its params dataclass or its params.yaml
section, or a metric that lacks a working function, a label or a direction, fails here."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from deepfm.config import MODEL_SECTIONS
from deepfm.evaluation import metrics as M
from deepfm.models import MODELS, RankingModel, _model_class
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("name", sorted(MODEL_SECTIONS))
def test_every_model_has_its_class_dataclass_and_params_section(name):
    section = MODEL_SECTIONS[name]
    assert dataclasses.is_dataclass(section) and section.__dataclass_params__.frozen, name
    fields = dataclasses.fields(section)
    missing_default = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    assert not missing_default, f"{name}: give {missing_default} a documented default"
    assert name in PARAMS, f"params.yaml lacks the '{name}:' section"
    # `train:` holds the model's own train keys (config._own_train), not a field
    assert set(PARAMS[name] or {}) - {"train"} == {f.name for f in fields}, name
    cls = MODELS[name]
    assert issubclass(cls, RankingModel) and cls.__module__ == f"deepfm.models.{name}"
    assert list(inspect.signature(cls.__init__).parameters) == [
        "self", "schema", "features", "params"
    ]  # fmt: skip
    if not cls.trainable:  # fitted in closed form
        assert callable(getattr(cls, "fit", None)), f"{name} must implement fit(split)"


def test_the_train_stage_tracks_the_chosen_models_section():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "${model}" in stages["train"]["params"]


def _fake_module(monkeypatch, body: str) -> None:
    module = types.ModuleType("deepfm.models.fake")
    exec(body, module.__dict__)  # a model module made by the test
    monkeypatch.setitem(sys.modules, "deepfm.models.fake", module)


def test_a_model_module_must_define_exactly_one_model(monkeypatch):
    _fake_module(monkeypatch, "")
    with pytest.raises(TypeError, match=r"fake\.py must define exactly one .* defines none"):
        _model_class("fake")
    _fake_module(
        monkeypatch,
        "from deepfm.models.base import RankingModel\n"
        "class A(RankingModel): pass\n"
        "class B(RankingModel): pass\n",
    )
    with pytest.raises(TypeError, match=r"defines \['A', 'B'\]"):
        _model_class("fake")


@pytest.mark.parametrize("name", list(M.METRICS))
def test_every_metric_has_a_working_function_label_and_direction(name):
    metric = M.METRICS[name]
    assert metric.name == name and re.fullmatch(r"[a-z][a-z0-9_]*", name)
    assert not any(name.startswith(p) for p in M.RANKINGS.values() if p), name
    assert metric.label and isinstance(metric.higher_is_better, bool)
    ranks = np.array([1, 3, 12, 7])
    if metric.per_user:
        values = M.per_user_values(metric, ranks, 10 if metric.cutoff else None)
        assert values.shape == ranks.shape and values.dtype == np.float64, name
    else:
        rows = (np.array([1, 0, 0, 1]), np.array([2.0, -1.0, 0.5, 0.1]))
        groups = (np.array([3, 3, 5, 5], dtype=np.uint64),) if metric.grouped else ()
        value = metric.fn(*rows, *groups)
        assert isinstance(value, float) and np.isfinite(value), name
        if M.SAMPLED in metric.rankings:  # the evaluation's blocked pairs: the same value
            assert metric.from_pairs(M.PooledPairs.of(*rows)) == value, name
    for ranking in metric.rankings:
        if ranking == M.ROWS:  # the ctr protocol's metrics: keys without prefix or cutoff
            assert name in M.row_keys() and M.parse_key(name)[0] is metric
        else:
            assert M.key(metric, ranking, 5 if metric.cutoff else None) in M.keys([5])


def test_no_two_source_files_share_a_name():
    """`python src/stages/evaluate.py` and deepfm/evaluation/... must not be confusable: every
    module under src/ has its own file name (package markers aside). `python -m deepfm` is the
    one __main__.py: the report is `deepfm report`."""
    root = Path(__file__).resolve().parents[1] / "src"
    names = [p.name for p in root.rglob("*.py") if p.name != "__init__.py"]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
