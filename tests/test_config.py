import dataclasses
import re

import pytest
import yaml

from deepfm.config import (
    MODEL_SECTIONS,
    Config,
    ConfigError,
    EvalConfig,
    SplitConfig,
    TrainConfig,
    load_config,
    parse_config,
)
from tests.conftest import REPO

ML100K = yaml.safe_load((REPO / "params.yaml").read_text())["datasets"]["ml-100k"]


def test_repo_params_load_and_are_complete():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.model in cfg.models
    assert cfg.eval.num_negatives == 999


def _code_defaults(section: type) -> dict:
    return {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(section)
    }


@pytest.mark.parametrize("name", ["split", "train", "eval", *MODEL_SECTIONS])
def test_the_dataclass_defaults_are_params_yaml_s(name):
    """One set of defaults: a reader of config.py sees the values a pipeline run uses (a
    model's own `train:` keys live in params.yaml alone)."""
    section = {"split": SplitConfig, "train": TrainConfig, "eval": EvalConfig, **MODEL_SECTIONS}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    declared = {k: v for k, v in params[name].items() if k != "train"}
    code = _code_defaults(section[name])
    assert code == declared, {k: (code.get(k), v) for k, v in declared.items() if code.get(k) != v}


def test_the_top_level_defaults_are_params_yaml_s():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    code = _code_defaults(Config)
    assert {k: code[k] for k in ("seed", "dataset", "model")} == {
        k: params[k] for k in ("seed", "dataset", "model")
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epoch": 3}}, r"unknown key 'train\.epoch'.*Did you mean 'epochs'"),
        ({"trian": {}}, r"unknown key 'trian'.*Did you mean 'train'"),
        ({"train": {"epochs": "ten"}}, r"'train\.epochs' is 'ten' \(str\); it must be an integer"),
        ({"train": {"epochs": 2.5}}, r"'train\.epochs' is 2\.5.*integer"),
        ({"train": {"sparse_embeddings": 1}}, r"'train\.sparse_embeddings'.*true or false"),
        ({"train": {"epochs": 0}}, r"'train\.epochs' is 0; it must be >= 1"),
        ({"train": {"learning_rate": 0}}, r"'train\.learning_rate' is 0\.0; it must be > 0"),
        ({"train": {"optimizer": "adagrad"}}, r"'train\.optimizer' is 'adagrad'; allowed: 'adam'"),
        ({"eval": {"ks": [10, 0]}}, r"'eval\.ks\[1\]' is 0; it must be >= 1"),
        ({"eval": {"ks": []}}, r"'eval\.ks'.*non-empty"),
        (
            {"deepfm": {"dropout": 1.5}},
            r"'deepfm\.dropout' is 1\.5; it must be >= 0\.0 and <= 0\.99",
        ),
        (
            {"model": "xgboost"},
            r"'model' is 'xgboost'; allowed: attention_deepfm, deepfm, ease, fm, "
            r"item_cooccurrence, itempop, lr, sasrec, xdeepfm",
        ),
        ({"lr": {"embed_dim": 4}}, r"unknown key 'lr\.embed_dim'\. Allowed here: history_length\."),
        (
            {"xdeepfm": {"cin_layers": [63, 64]}},
            r"'xdeepfm\.cin_layers' is \[63, 64\]; with 'xdeepfm\.cin_split_half: true'",
        ),
        (
            {"dataset": "ml-latest", "datasets": {"ml-100k": ML100K}},
            r"'dataset' is 'ml-latest'; declared under 'datasets': ml-100k\.",
        ),
        (
            {"datasets": {"mine": {**ML100K, "source": "ml-latest"}}},
            r"'datasets\.mine\.source' is 'ml-latest'; use 'local' \(your own files\) or a "
            r"registered release: avazu, criteo, ml-100k, ml-10m, ml-1m, ml-20m, ml-25m, ml-32m\.",
        ),
        (
            {"datasets": {"mine": {**ML100K, "label": {"threshold": True}}}},
            r"'datasets\.mine\.label\.threshold' is True; it must be a number\.",
        ),
        ({"train": 3}, r"'train' must be a mapping"),
        ({"deepfm": {"field_dims": {"gender": 0}}}, r"'deepfm\.field_dims\.gender' is 0; it must"),
        (
            {"fm": {"field_dims": [2]}},
            r"'fm\.field_dims' is \[2\]; it must be a mapping of names to an integer",
        ),
        # which metric names train.monitor may take: training's check (test_training.py)
        ({"train": {"monitor": 10}}, r"'train\.monitor' is 10 \(int\); it must be a string"),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)


def test_params_survive_dvc_rewriting_them(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel (YAML 1.2), which writes a string like
    off or yes bare; our loader (YAML 1.1) would read it back as a boolean. Every value must
    mean the same after DVC's rewrite (an 'off' value once failed every queued experiment)."""
    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    copy.write_text((REPO / "params.yaml").read_text())
    with modify_yaml(copy) as params:
        params["seed"] = params["seed"]
    assert load_config(copy) == load_config(REPO / "params.yaml")


def test_pipeline_loader_requires_every_key(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["train"]["patience"]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"missing key 'train\.patience'.*patience: 10"):
        load_config(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_epochs_below_min_epochs_is_allowed():
    # `dvc exp run -S train.epochs=2` must work with the default min_epochs
    assert parse_config({"train": {"epochs": 2, "min_epochs": 10}}).train.epochs == 2


def test_types_are_normalised():
    cfg = parse_config({"train": {"learning_rate": 1}})
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.train.learning_rate == 1.0
    assert cfg.to_dict()["train"]["learning_rate"] == 1.0
    assert cfg.to_dict()["deepfm"]["dnn_hidden"] == list(cfg.models["deepfm"].dnn_hidden)


def test_stage_with_a_typo_in_params_exits_nonzero_and_writes_nothing(tmp_path):
    import os
    import subprocess
    import sys

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["epoch"] = 3  # the typo a `dvc exp run -S train.epoch=3` would add
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "stages" / "fetch.py"), "--raw", "data/raw"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown key 'train.epoch'. Did you mean 'epochs'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_overrides_are_applied_as_dvc_exp_run_set_does_and_checked():
    cfg = load_config(REPO / "params.yaml", ["train.batch_size=4096", "deepfm.dropout=0.1"])
    assert cfg.train.batch_size == 4096 and cfg.models["deepfm"].dropout == 0.1
    assert cfg.train.epochs == load_config(REPO / "params.yaml").train.epochs
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config(REPO / "params.yaml", ["train.batch_size"])
    with pytest.raises(ConfigError, match="batch_sise"):  # an unknown key, as in the file
        load_config(REPO / "params.yaml", ["train.batch_sise=4"])
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load_config(REPO / "params.yaml", ["seed.x=1"])


def test_a_models_own_train_keys_replace_the_shared_ones_when_it_is_chosen():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    shared = parse_config(raw, require_all=True).train
    raw["sasrec"]["train"] = {"epochs": 40, "min_epochs": 40, "learning_rate": 0.001}
    other = parse_config(raw, require_all=True)  # another model is chosen: no effect
    assert other.train == shared
    raw["model"] = "sasrec"
    cfg = parse_config(raw, require_all=True)
    assert (cfg.train.epochs, cfg.train.min_epochs, cfg.train.learning_rate) == (40, 40, 0.001)
    assert cfg.train.batch_size == shared.batch_size  # the keys it does not name stay shared
    assert "train" not in vars(cfg.model_params)
    cases = [
        ({"epochs": 0}, "'sasrec.train.epochs' is 0; it must be >= 1"),
        ({"epoch": 3}, "unknown key 'sasrec.train.epoch'. Did you mean 'epochs'?"),
        (5, "'sasrec.train' must map train keys to this model's values"),
    ]
    for own, message in cases:
        raw["sasrec"]["train"] = own
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(raw, require_all=True)
    raw["model"] = "deepfm"  # a section is checked even when its model is not chosen
    with pytest.raises(ConfigError, match=re.escape(cases[-1][1])):
        parse_config(raw, require_all=True)
