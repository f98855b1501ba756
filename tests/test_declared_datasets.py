"""Datasets declared in params, not coded: the declaration's checks, a local CSV / Parquet
dataset through fetch, preprocess and split, dense fields, and every model on the result."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from deepfm.config import ConfigError, load_config, parse_config
from deepfm.data.batches import feature_tensors
from deepfm.data.canonical import canonical_tables, fetch_dataset
from deepfm.data.declaration import parse_dataset
from deepfm.data.fields import bucket_values
from deepfm.data.movielens import ParseError
from deepfm.data.sources import FetchError
from deepfm.data.splitting import read_split, split_dataset, write_split
from deepfm.models import MODELS, build_model
from tests.conftest import REPO, make_synthetic_ratings, synthetic_declaration

RELEASES = ("ml-100k", "ml-1m")


def _spec(decl: dict, name: str = "synth"):
    return parse_dataset(name, decl, RELEASES)


@pytest.fixture
def synthetic(tmp_path):
    csv = make_synthetic_ratings(tmp_path / "ratings.csv", n_users=60, n_items=50, per_user=16)
    spec = _spec(synthetic_declaration(csv))
    raw = fetch_dataset(spec, tmp_path / "raw")
    return spec, raw


def _write(tmp_path, text: str, decl_changes: dict | None = None):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    decl = synthetic_declaration(csv)
    decl.update(decl_changes or {})
    spec = _spec(decl)
    return spec, fetch_dataset(spec, tmp_path / "raw")


HEADER = "user,item,stars,when,age,category,tags,device\n"
IDS = {
    "user_id": {"source": "user", "kind": "sparse"},
    "item_id": {"source": "item", "kind": "sparse"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "csv"}, r"'datasets\.synth\.source' is 'csv'; use 'local'"),
        ({"label": {}}, r"'datasets\.synth\.label' must hold exactly one rule"),
        ({"label": {"threshold": 7, "column": "y"}}, r"exactly one rule"),
        ({"fields": {"item_id": IDS["item_id"]}}, r"lacks 'user_id'"),
        (
            {"fields": {**IDS, "user_id": {"source": "item", "kind": "sparse"}}},
            r"'datasets\.synth\.fields\.user_id' must be \{source: user, kind: sparse\}",
        ),
        (
            {"fields": {**IDS, "age": {"source": "user", "kind": "dense", "min_count": 2}}},
            r"'datasets\.synth\.fields\.age\.min_count' does not apply to a dense field",
        ),
        (
            {"fields": {**IDS, "hour": {"source": "context", "kind": "dense"}}},
            r"'datasets\.synth\.fields\.hour\.kind' is 'dense'; a context field is sparse",
        ),
        (
            {"fields": {**IDS, "age": {"source": "user", "kind": "number"}}},
            r"'datasets\.synth\.fields\.age\.kind' is 'number'; allowed: sparse, sequence, dense",
        ),
        (
            {"files": {"interactions": {"path": "r.csv", "sha256": "abc"}}},
            r"'datasets\.synth\.files\.interactions\.sha256' is 'abc'; give the file's sha256",
        ),
        ({"files": {"ratings": {"path": "r.csv"}}}, r"'datasets\.synth\.files\.ratings' is not"),
        ({"columns": {"score": "stars"}}, r"'datasets\.synth\.columns\.score' is not a known key"),
    ],
)
def test_declaration_errors_name_the_key_and_the_fix(tmp_path, change, message):
    decl = synthetic_declaration(make_synthetic_ratings(tmp_path / "r.csv", 5, 10, 4))
    with pytest.raises(ValueError, match=message):
        _spec({**decl, **change})


def test_config_checks_every_declared_dataset_and_the_choice():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw["datasets"]) >= {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m"}
    cfg = parse_config(raw, require_all=True)
    assert cfg.dataset_spec.source == "ml-100k" and cfg.dataset_spec.label_threshold == 4.0
    assert [f.name for f in cfg.datasets["ml-32m"].fields] == [
        "user_id", "item_id", "year_bucket", "genres"
    ]  # fmt: skip
    bad = copy.deepcopy(raw)
    bad["dataset"] = "synth"
    with pytest.raises(ConfigError, match=r"'dataset' is 'synth'; declared under 'datasets': "):
        parse_config(bad, require_all=True)
    bad = copy.deepcopy(raw)
    del bad["datasets"]
    with pytest.raises(ConfigError, match=r"missing section 'datasets'"):
        parse_config(bad, require_all=True)


def test_local_fetch_checks_the_sha256_and_never_half_writes(tmp_path):
    csv = make_synthetic_ratings(tmp_path / "r.csv", 5, 10, 4)
    decl = synthetic_declaration(csv)
    spec = _spec(decl)
    raw = fetch_dataset(spec, tmp_path / "raw")
    assert (raw / "interactions.csv").read_bytes() == csv.read_bytes()
    csv.write_text(csv.read_text().replace("u1,", "u2,", 1))
    actual = hashlib.sha256(csv.read_bytes()).hexdigest()
    with pytest.raises(FetchError, match=rf"sha256 {actual}, but datasets\.synth\.files\."):
        fetch_dataset(spec, tmp_path / "raw")
    assert (raw / "interactions.csv").read_bytes() != csv.read_bytes()  # left as it was
    elsewhere = {**decl["files"]["interactions"], "path": str(tmp_path / "nope.csv")}
    missing = _spec({**decl, "files": {"interactions": elsewhere}})
    with pytest.raises(FetchError, match=r"nope\.csv does not exist"):
        fetch_dataset(missing, tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_local_csv_becomes_the_canonical_tables(synthetic, tmp_path):
    spec, raw = synthetic
    interactions, users, items = canonical_tables(spec, raw)
    source = pd.read_csv(tmp_path / "ratings.csv", dtype=str, keep_default_na=False)
    assert len(interactions) == len(source)
    assert list(interactions.columns)[:5] == ["user_id", "item_id", "rating", "timestamp", "label"]
    row = source.iloc[0]
    got = interactions[
        (interactions.user_id == row["user"]) & (interactions.item_id == row["item"])
    ]
    assert got.rating.item() == float(row["stars"]) and got.timestamp.item() == int(row["when"])
    np.testing.assert_array_equal(interactions.label, (interactions.rating >= 7).astype(np.int8))
    # a 0-10 scale, threshold 7
    assert interactions.rating.min() == 0 and interactions.rating.max() == 10
    assert list(interactions.columns)[5:] == ["device"]
    assert interactions.device.tolist() == [
        dict(zip(zip(source.user, source.item, strict=True), source.device, strict=True))[(u, i)]
        for u, i in zip(interactions.user_id, interactions.item_id, strict=True)
    ]
    assert list(users.columns) == ["user_id", "age"] and list(items.columns) == [
        "item_id", "category", "tags"
    ]  # fmt: skip
    age = dict(zip(source.user, source.age, strict=True))
    for u, a in zip(users.user_id, users.age, strict=True):
        assert (np.isnan(a) and age[u] == "") or a == float(age[u])
    assert users.age.isna().any()
    tags = dict(zip(source.item, source.tags, strict=True))
    for i, t in zip(items.item_id, items.tags, strict=True):
        assert list(t) == tags[i].split("|")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "u1,m1,seven,1600000000,30,drama,a,tv\n",
            r"bad\.csv, line 2: stars is 'seven'; expected a",
        ),
        (
            "u1,m1,7,yesterday,30,drama,a,tv\n",
            r"line 2: when is 'yesterday'; expected unix seconds",
        ),
        (",m1,7,1600000000,30,drama,a,tv\n", r"line 2: user is empty; every row needs one"),
        (
            "u1,m1,7,1600000000,30,drama,a,tv\nu1,m2,7,1600000001,31,drama,a,tv\n",
            r"bad\.csv, line 3: age is 31 but an earlier row of user_id u1 has 30; a user field",
        ),
        (
            "u1,m1,7,1600000000,30,drama,a,tv\nu1,m1,8,1600000001,30,drama,a,tv\n",
            r"line 3: user u1 and item m1 appear a second time; keep one row",
        ),
        ("u1,m1,7,1600000000,thirty,drama,a,tv\n", r"line 2: age is 'thirty'; expected a number"),
    ],
)
def test_bad_rows_are_named_by_file_line_and_column(tmp_path, body, message):
    spec, raw = _write(tmp_path, HEADER + body)
    with pytest.raises(ParseError, match=message):
        canonical_tables(spec, raw)


def test_a_missing_column_says_how_to_map_it(tmp_path):
    spec, raw = _write(tmp_path, "who,item,stars,when,age,category,tags,device\n")
    with pytest.raises(ParseError, match=r"no column 'user' .*datasets\.synth\.columns\.user_id"):
        canonical_tables(spec, raw)


def test_iso_dates_a_given_label_and_side_files(tmp_path):
    inter = tmp_path / "clicks.csv"
    inter.write_text(
        "uid,iid,clicked,at\n1,10,1,2024-05-01 12:00:00\n1,11,0,2024-05-01T12:00:01\n"
        "2,10,0,2024-05-02\n"
    )
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": [10, 11, 12], "price": [9.5, None, 3.0]}).to_parquet(items)
    decl = {
        "source": "local",
        "files": {
            "interactions": {"path": str(inter), "sha256": _sha(inter)},
            "items": {"path": str(items), "sha256": _sha(items)},
        },
        "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "at"},
        "label": {"column": "clicked"},
        "fields": {
            "user_id": {"source": "user", "kind": "sparse"},
            "item_id": {"source": "item", "kind": "sparse"},
            "price": {"source": "item", "kind": "sparse", "bins": [5]},
        },
    }
    spec = _spec(decl, "clicks")
    interactions, _, item_table = canonical_tables(spec, fetch_dataset(spec, tmp_path / "r"))
    assert interactions.timestamp.tolist() == [1714564800, 1714564801, 1714608000]
    assert interactions.label.tolist() == [1, 0, 0]
    assert item_table.item_id.tolist() == [10, 11]  # items without interactions are dropped
    assert item_table.price.iloc[0] == 9.5 and np.isnan(item_table.price.iloc[1])
    assert bucket_values(item_table.price, (5.0,)).tolist() == [">=5", None]
    decl["files"]["interactions"]["path"] = str(tmp_path / "clicks.csv")
    inter.write_text("uid,iid,clicked,at\n1,10,2,2024-05-01\n")
    decl["files"]["interactions"]["sha256"] = _sha(inter)
    spec = _spec(decl, "clicks")
    with pytest.raises(ParseError, match=r"line 2: clicked is '2'; a given label must be 0 or 1"):
        canonical_tables(spec, fetch_dataset(spec, tmp_path / "r"))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dense_fields_are_scaled_on_train_users_only(synthetic):
    spec, raw = synthetic
    tables = canonical_tables(spec, raw)
    split = split_dataset(*tables, fields=spec.fields, seed=1, min_positives=3, num_negatives=50)
    users = tables[1]
    age = users.age.to_numpy()
    seen = np.unique(split.train_users)
    mean, std = np.nanmean(age[seen]), np.nanstd(age[seen])
    dense = split.features["user_dense"][:, 0]
    known = ~np.isnan(age)
    np.testing.assert_allclose(dense[known], (age[known] - mean) / std, rtol=1e-5)
    assert (dense[~known] == 0).all()  # missing -> the train mean -> 0 after scaling
    assert split.summary["dense_scalers"]["age"]["shift"] == pytest.approx(mean)
    names = [f.name for f in split.schema.fields]
    assert names == ["user_id", "age", "device", "item_id", "category", "tags"]
    assert split.schema.field("age").kind == "dense"

    minmax = [
        f if f.name != "age" else type(f)(**{**f.__dict__, "scaler": "minmax", "missing": -1.0})
        for f in spec.fields
    ]
    split = split_dataset(*tables, fields=minmax, seed=1, min_positives=3, num_negatives=50)
    lo, hi = np.nanmin(age[seen]), np.nanmax(age[seen])
    dense = split.features["user_dense"][:, 0]
    np.testing.assert_allclose(dense[known], (age[known] - lo) / (hi - lo), rtol=1e-5)
    np.testing.assert_allclose(dense[~known], (-1 - lo) / (hi - lo), rtol=1e-5)


def test_vocabulary_min_count_and_bag_length(synthetic):
    spec, raw = synthetic
    tables = canonical_tables(spec, raw)
    fields = [
        type(f)(**{**f.__dict__, "min_count": 1000})
        if f.name == "category"
        else type(f)(**{**f.__dict__, "max_length": 1})
        if f.name == "tags"
        else f
        for f in spec.fields
    ]
    split = split_dataset(*tables, fields=fields, seed=1, min_positives=3, num_negatives=50)
    category = split.schema.field("category")
    assert category.vocab_size == 1  # no category is on 1000 items: all unknown
    assert (split.item_features[:, category.column] == 0).all()
    assert split.features["item_tags"].shape[1] == 1
    first = [t[0] for t in tables[2].tags]
    codes = split.features["item_tags"][:, 0]
    # the same first tag always gets the same code, different tags different codes
    assert len(set(zip(first, codes, strict=True))) == len(set(first)) == len(set(codes))


def test_every_model_trains_a_step_and_scores_on_a_declared_dataset(synthetic, tmp_path):
    spec, raw = synthetic
    split = split_dataset(
        *canonical_tables(spec, raw),
        fields=spec.fields, seed=1, min_positives=3, num_negatives=50, history_length=5,
    )  # fmt: skip
    write_split(split, tmp_path / "split")
    split = read_split(tmp_path / "split")
    assert split.user_ids.dtype.kind == "U" and split.user_ids[0] == "u0"
    cfg = load_config(REPO / "params.yaml")
    users = torch.from_numpy(split.val.users[:6]).long()
    history = torch.from_numpy(split.val.history[:6])
    items = torch.arange(7)
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, split.schema, feature_tensors(split), cfg.models[name])
        if any(p.requires_grad for p in model.parameters()):
            logits = model(users, items[:6], history)
            logits.sum().backward()
            dense_grad = model.embedding.dense["user"].grad if hasattr(model, "embedding") else 0
            if name in ("deepfm", "xdeepfm", "attention_deepfm", "fm"):
                assert dense_grad.abs().sum() > 0, name  # the dense field is used
        model.eval()
        matrix = model.score_matrix(users, items, history)
        pairs = model(users, items[:6], history)
        torch.testing.assert_close(matrix.diagonal(), pairs, rtol=1e-4, atol=1e-5, msg=name)
        if name in ("deepfm", "xdeepfm", "attention_deepfm", "fm", "lr"):
            if name == "lr":  # its weights start at 0: give the context some
                with torch.no_grad():
                    model.linear.tables["user"].weight.normal_()
            other = history.clone()
            other[:, -1] = other[:, -1] % (split.schema.field("device").vocab_size - 1) + 1
            assert not torch.equal(model(users, items[:6], other), model(users, items[:6], history))


def test_context_fields_travel_with_each_example_after_its_history(synthetic):
    spec, raw = synthetic
    interactions, users, items = canonical_tables(spec, raw)
    split = split_dataset(
        interactions, users, items, fields=spec.fields, seed=1, min_positives=3,
        num_negatives=50, history_length=4,
    )  # fmt: skip
    device = split.schema.field("device")
    assert device.source == "context" and device.column == 0
    assert split.train_history.shape[1] == 4 + 1 and split.test.history.shape[1] == 4 + 1
    # the split's row order is (user, timestamp, item); interactions is already in it
    vocab = sorted(set(interactions.device))
    code = {d: i + 1 for i, d in enumerate(vocab)}
    held = {
        (u, i)
        for h in (split.val, split.test)
        for u, i in zip(h.users.tolist(), h.items.tolist(), strict=True)
    }
    user_idx = np.searchsorted(users.user_id.to_numpy(), interactions.user_id.to_numpy())
    item_idx = np.searchsorted(items.item_id.to_numpy(), interactions.item_id.to_numpy())
    # the causal cut: an evaluated user's rows from their validation item on do not train
    pairs = list(zip(user_idx.tolist(), item_idx.tolist(), strict=True))
    val_row = {(u, i): k for k, (u, i) in enumerate(pairs)}
    cut = {u: val_row[u, i] for u, i in zip(split.val.users.tolist(), split.val.items.tolist(),
                                             strict=True)}  # fmt: skip
    train = [k for k, (u, _) in enumerate(pairs) if k < cut.get(u, len(pairs))]
    assert len(train) == len(split.train_users) and held.isdisjoint(pairs[k] for k in train)
    want = [code[d] for d in interactions.device.to_numpy()[train]]
    assert split.train_history[:, 4].tolist() == want
    for h in (split.val, split.test):
        rows = {(u, i): k for k, (u, i) in enumerate(zip(user_idx, item_idx, strict=True))}
        got = [
            code[interactions.device.iloc[rows[(u, i)]]]
            for u, i in zip(h.users, h.items, strict=True)
        ]
        assert h.history[:, 4].tolist() == got


def test_a_context_value_seen_only_in_held_out_rows_is_unknown(synthetic):
    spec, raw = synthetic
    interactions, users, items = canonical_tables(spec, raw)
    split = split_dataset(
        interactions, users, items, fields=spec.fields, seed=1, min_positives=3, num_negatives=5
    )
    first = split.test.users[0]
    row = interactions.index[
        (interactions.user_id == users.user_id.iloc[first])
        & (interactions.item_id == items.item_id.iloc[split.test.items[0]])
    ]
    changed = interactions.copy()
    changed.loc[row, "device"] = "fridge"
    again = split_dataset(
        changed, users, items, fields=spec.fields, seed=1, min_positives=3, num_negatives=5
    )
    assert again.schema.field("device").vocab_size == split.schema.field("device").vocab_size
    assert split.test.history[0, 0] > 0
    assert again.test.history[0, 0] == 0  # "fridge" was never seen in train


def test_an_empty_cell_is_a_missing_value_not_the_text_nan(tmp_path):
    """pandas' string dtype turns None into NaN, which a bag would read as the tag 'nan'."""
    spec, raw = _write(
        tmp_path,
        HEADER + "u1,m1,7,1600000000,30,,,tv\nu2,m2,8,1600000001,,drama,a|b,\n",
    )
    interactions, _, items = canonical_tables(spec, raw)
    tags = dict(zip(items.item_id, items.tags, strict=True))
    assert list(tags["m1"]) == [] and list(tags["m2"]) == ["a", "b"]
    category = dict(zip(items.item_id, items.category, strict=True))
    assert category["m2"] == "drama" and pd.isna(category["m1"])  # missing: code 0
    device = dict(zip(interactions.user_id, interactions.device, strict=True))
    assert device["u1"] == "tv" and pd.isna(device["u2"])
