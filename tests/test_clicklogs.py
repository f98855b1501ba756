"""The ctr protocol: click logs in the Criteo and Avazu formats, the row split, the given-label
training and the row evaluation (AUC equal to scikit-learn's)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import log_loss, roc_auc_score

from deepfm.config import ConfigError, parse_config
from deepfm.data.canonical import canonical_tables, fetch_dataset
from deepfm.data.clicklogs import AVAZU_COLUMNS, parse_avazu, parse_criteo
from deepfm.data.declaration import parse_dataset
from deepfm.data.fields import log_bucket_values
from deepfm.data.movielens import ParseError
from deepfm.data.rowsplit import split_ctr
from deepfm.data.splitting import read_split, write_split
from deepfm.evaluation.rows import evaluate_rows
from deepfm.models.checkpoint import load_model
from deepfm.training.loop import TrainingError, train
from deepfm.training.objectives import GivenLabels
from tests.conftest import REPO, criteo_declaration, make_criteo_file

REGISTERED = ("avazu", "criteo", "ml-100k")


def _row(label="1", ints=None, cats=None) -> str:
    ints = ints if ints is not None else ["1"] * 13
    cats = cats if cats is not None else ["68fd1e64"] * 26
    return "\t".join([label, *ints, *cats]) + "\n"


def test_criteo_rows_parse_with_missing_values(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(_row("0", ["", "-1", *["3"] * 11], ["", *["05db9164"] * 25]) + _row())
    table = parse_criteo(path)
    assert table["label"].tolist() == [0, 1] and table["timestamp"].tolist() == [0, 1]
    assert np.isnan(table["I1"].iloc[0]) and table["I2"].iloc[0] == -1
    assert pd.isna(table["C1"].iloc[0]) and table["C2"].iloc[0] == "05db9164"
    assert (table["user_id"] == 0).all() and (table["item_id"] == 0).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_row() + "1\t2\t3\n", r"train\.txt, line 2: 3 fields, expected 40"),
        (_row() + _row(ints=["x", *["1"] * 12]), r"line 2: I1 is 'x'; expected an integer"),
        (_row() + _row(ints=["1.5", *["1"] * 12]), r"line 2: I1 is '1\.5'; expected an integer"),
        (_row() + _row(label="2"), r"line 2: label is '2'; a click label is 0 or 1"),
        ("", r"train\.txt is empty"),
    ],
)
def test_bad_criteo_rows_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "train.txt"
    path.write_text(text)
    with pytest.raises(ParseError, match=message):
        parse_criteo(path)


AVAZU_HEADER = ",".join(AVAZU_COLUMNS) + "\n"


def _avazu_row(click="0", hour="14102100") -> str:
    values = ["1000009418151094273", click, hour, "1005", "0", "1fbe01fe", "f3845767",
              "28905ebd", "ecad2386", "7801e8d9", "07d7df22", "a99f214a", "ddd2926e",
              "44956a24", "1", "2", "15706", "320", "50", "1722", "0", "35", "-1",
              "79"]  # fmt: skip
    return ",".join(values) + "\n"


def test_avazu_hour_becomes_hour_of_day_and_weekday(tmp_path):
    path = tmp_path / "train"
    path.write_text(AVAZU_HEADER + _avazu_row("1", "14102100") + _avazu_row("0", "14102623"))
    table = parse_avazu(path)
    assert table["click"].tolist() == [1, 0] and table["label"].tolist() == [1, 0]
    assert table["hour_of_day"].tolist() == ["00", "23"]
    assert table["weekday"].tolist() == ["1", "6"]  # 2014-10-21 was a Tuesday, the 26th a Sunday
    assert table["timestamp"].tolist() == [1413849600, 1414364400]
    assert "id" not in table and table["site_id"].iloc[0] == "1fbe01fe"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,click\n" + _avazu_row(), r"train, line 1: the header is 'id,click'"),
        (AVAZU_HEADER + _avazu_row() + "1,2\n", r"train, line 3: 2 fields, expected 24"),
        (AVAZU_HEADER + _avazu_row(hour="2014-10-21"), r"line 2: hour is '2014-10-21'"),
        (AVAZU_HEADER + _avazu_row(click="yes"), r"line 2: click is 'yes'; expected an integer"),
    ],
)
def test_bad_avazu_rows_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "train"
    path.write_text(text)
    with pytest.raises(ParseError, match=message):
        parse_avazu(path)


def test_log_buckets_follow_the_criteo_winners_rule():
    values = pd.Series([None, -1, 0, 1, 2, 3, 10, 100, 1e6])
    got = log_bucket_values(values).tolist()
    # x > 2: floor(ln(x) ** 2): ln 3 = 1.0986 -> 1; ln 10 = 2.30 -> 5; ln 100 = 4.61 -> 21
    assert got[1:] == ["-1", "0", "1", "2", "1", "5", "21", "190"]
    assert pd.isna(got[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fields": {"user_id": {"source": "user", "kind": "sparse"}}}, r"has user_id: under"),
        ({"label": {"threshold": 1}}, r"must be \{column: <its 0/1 click column>\}"),
        ({"protocol": {"name": "ctr", "fractions": [0.8, 0.3]}}, r"three positive fractions"),
        ({"protocol": {"name": "ranking"}}, r"'datasets\.c\.protocol\.name' is 'ranking'"),
        ({"files": {}}, r"lacks 'interactions': criteo is not downloaded"),
        (
            {"protocol": {"name": "ctr", "group": "user"}},
            r"'datasets\.c\.protocol\.group' is 'user', not a declared field; name the field",
        ),
        (
            {"protocol": {"name": "topk", "group": "C1"}},
            r"split, fractions and group apply to the ctr protocol only",
        ),
    ],
)
def test_ctr_declaration_errors(tmp_path, change, message):
    decl = criteo_declaration(make_criteo_file(tmp_path / "t.txt", n_rows=10))
    with pytest.raises(ValueError, match=message):
        parse_dataset("c", {**decl, **change}, REGISTERED)


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    root = tmp_path_factory.mktemp("criteo")
    spec = parse_dataset("c", criteo_declaration(make_criteo_file(root / "t.txt")), REGISTERED)
    interactions, _, _ = canonical_tables(spec, fetch_dataset(spec, root / "raw"))
    return spec, interactions


def test_the_row_split_by_order_and_by_seeded_random(criteo):
    spec, interactions = criteo
    ordered = split_ctr(interactions, spec.fields, seed=1)
    assert ordered.summary["rows"] == {"train": 16000, "val": 2000, "test": 2000}
    np.testing.assert_array_equal(ordered.test.labels, interactions["label"].to_numpy()[-2000:])
    shuffled = split_ctr(interactions, spec.fields, seed=1, method="random")
    again = split_ctr(interactions, spec.fields, seed=1, method="random")
    other = split_ctr(interactions, spec.fields, seed=2, method="random")
    np.testing.assert_array_equal(shuffled.test.codes, again.test.codes)
    assert not np.array_equal(shuffled.test.labels, ordered.test.labels)
    assert not np.array_equal(shuffled.test.codes, other.test.codes)
    assert [f.name for f in ordered.schema.fields][:2] == ["I1", "I2"]
    assert all(f.source == "context" for f in ordered.schema.fields)


def test_vocabularies_see_train_rows_only_and_rare_values_are_unknown(criteo):
    spec, interactions = criteo
    changed = interactions.copy()
    changed.loc[changed.index[-1], "C3"] = "deadbeef"  # only in the last (test) row
    changed.loc[changed.index[:3], "C4"] = "cafef00d"  # 3 train rows: above min_count 2
    changed.loc[changed.index[3], "C5"] = "0badf00d"  # 1 train row: below min_count 2
    split = split_ctr(changed, spec.fields, seed=1)
    names = [f.name for f in split.schema.fields]
    c3, c4, c5 = names.index("C3"), names.index("C4"), names.index("C5")
    assert split.test.codes[-1, c3] == 0
    assert split.train.codes[0, c4] > 0 and split.train.codes[0, c4] == split.train.codes[2, c4]
    assert split.train.codes[3, c5] == 0


def test_written_ctr_split_reads_back(criteo, tmp_path):
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1)
    write_split(split, tmp_path / "s")
    back = read_split(tmp_path / "s")
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(back, name).codes, getattr(split, name).codes)
        np.testing.assert_array_equal(getattr(back, name).labels, getattr(split, name).labels)
    assert back.schema == split.schema and back.summary == split.summary


def _cfg(model: str, **train):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] = model
    raw["train"].update({"epochs": 6, "min_epochs": 6, "batch_size": 256, "monitor": "auc",
                         "val_every": 2, **train})  # fmt: skip
    for section in ("deepfm", "xdeepfm", "attention_deepfm"):
        raw[section].update(recent_items=0, history_pooling="mean")
    raw["attention_deepfm"]["target_attention"] = False
    return parse_config(raw, require_all=True)


def test_deepfm_learns_the_planted_interaction_that_lr_cannot(criteo, tmp_path):
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1)
    auc = {}
    for model in ("lr", "deepfm"):
        train(_cfg(model), split, tmp_path / f"{model}.pt")
        scorer, _ = load_model(tmp_path / f"{model}.pt")
        result = evaluate_rows(scorer, split.test)
        assert result.metrics["auc"] == pytest.approx(
            roc_auc_score(result.labels, result.logits), abs=1e-12
        )
        probabilities = 1 / (1 + np.exp(-result.logits))
        assert result.metrics["logloss"] == pytest.approx(
            log_loss(result.labels, probabilities), abs=1e-9
        )
        auc[model] = result.metrics["auc"]
    assert auc["lr"] < 0.6 < 0.8 < auc["deepfm"], auc


def test_given_labels_on_the_device_yield_the_host_batches(criteo):
    """train.device_epochs: the codes go to the device once (on the CPU, the map itself), and
    each batch is the one the host path gathers from the file."""
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1)
    host = GivenLabels(split, "cpu").batches(1, 300, torch.Generator().manual_seed(4))
    device = GivenLabels(split, "cpu", True).batches(1, 300, torch.Generator().manual_seed(4))
    count = 0
    for a, b in zip(host, device, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
        count += len(a[2])
    assert count == len(split.train.labels)


def test_sparse_embedding_updates_learn_the_planted_interaction(criteo, tmp_path):
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1)
    train(_cfg("deepfm", sparse_embeddings=True), split, tmp_path / "m.pt")
    scorer, _ = load_model(tmp_path / "m.pt")
    assert evaluate_rows(scorer, split.test).metrics["auc"] > 0.8


def test_ctr_refuses_ranking_models_and_ranking_monitors(criteo, tmp_path):
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1)
    with pytest.raises(TrainingError) as caught:
        train(_cfg("deepfm", monitor="full_ndcg@10"), split, tmp_path / "m.pt")
    assert str(caught.value) == (
        "params.yaml: 'train.monitor' is 'full_ndcg@10'; dataset 'ml-100k' uses the ctr "
        "protocol, scored by auc, logloss: set train.monitor to one of them (e.g. -S "
        "train.monitor=auc)."
    )
    with pytest.raises(TrainingError, match=r"gauc needs the rows' groups: declare protocol"):
        train(_cfg("deepfm", monitor="gauc"), split, tmp_path / "m.pt")
    with pytest.raises(TrainingError, match=r"model 'itempop' ranks items"):
        train(_cfg("itempop"), split, tmp_path / "m.pt")
    with pytest.raises(ConfigError, match=r"'train\.monitor' is 'gauc@10'"):
        train(_cfg("deepfm", monitor="gauc@10"), split, tmp_path / "m.pt")


@pytest.mark.parametrize("source", ["criteo", "avazu"])
def test_the_streamed_parquet_holds_the_whole_file_parse(tmp_path, source):
    from deepfm.data.clicklogs import PARSERS, stream_click_log

    path = tmp_path / "log"
    if source == "criteo":
        make_criteo_file(path, n_rows=95)
    else:
        rows = [_avazu_row(str(i % 2), f"141021{i % 24:02d}") for i in range(95)]
        path.write_text(AVAZU_HEADER + "".join(rows))
    n = stream_click_log(source, path, tmp_path / "out.parquet", chunk_lines=10)
    whole = PARSERS[source](path)
    streamed = pd.read_parquet(tmp_path / "out.parquet")
    assert n == len(whole) == 95
    pd.testing.assert_frame_equal(
        streamed.astype(object).where(streamed.notna(), None),
        whole.astype(object).where(whole.notna(), None),
        check_dtype=False,
    )


def test_a_bad_line_in_a_later_chunk_is_named_by_its_own_number(tmp_path):
    from deepfm.data.clicklogs import stream_click_log

    path = tmp_path / "train.txt"
    make_criteo_file(path, n_rows=40)
    lines = path.read_text().splitlines(keepends=True)
    lines[22] = "1\t2\t3\n"
    path.write_text("".join(lines))
    with pytest.raises(ParseError, match=r"^mine\.txt, line 23: 3 fields, expected 40"):
        stream_click_log("criteo", path, tmp_path / "o.parquet", shown_as="mine.txt",
                         chunk_lines=10)  # fmt: skip
    assert not (tmp_path / "o.parquet").exists()  # nothing half-written
    lines[22] = _row(ints=["x", *["1"] * 12])
    path.write_text("".join(lines))
    with pytest.raises(ParseError, match=r"line 23: I1 is 'x'"):
        stream_click_log("criteo", path, tmp_path / "o.parquet", chunk_lines=10)


@pytest.mark.parametrize(("method", "group"), [("order", None), ("random", None), ("order", "C3")])
def test_the_streamed_split_writes_the_same_bytes_as_the_in_memory_one(tmp_path, method, group):
    from deepfm.data.clicklogs import stream_click_log
    from deepfm.data.rowsplit import split_ctr_stream

    spec = parse_dataset(
        "c", criteo_declaration(make_criteo_file(tmp_path / "t.txt", n_rows=3000)), REGISTERED
    )
    stream_click_log("criteo", tmp_path / "t.txt", tmp_path / "rows.parquet", chunk_lines=700)
    table = pd.read_parquet(tmp_path / "rows.parquet")
    memory = split_ctr(table, spec.fields, seed=3, method=method, group=group)
    write_split(memory, tmp_path / "memory")
    split_ctr_stream(tmp_path / "rows.parquet", spec.fields, tmp_path / "stream", seed=3,
                     method=method, group=group, batch_rows=250)  # fmt: skip
    files = sorted(p.name for p in (tmp_path / "memory").iterdir())
    assert ("test_groups.npy" in files) == (group is not None)
    assert "train_groups.npy" not in files  # only validation and test are grouped
    assert files == sorted(p.name for p in (tmp_path / "stream").iterdir())
    for name in files:
        assert (tmp_path / "stream" / name).read_bytes() == (
            tmp_path / "memory" / name
        ).read_bytes(), name


def test_a_local_csv_click_log_under_the_ctr_protocol(tmp_path):
    import hashlib

    path = tmp_path / "clicks.csv"
    path.write_text("clicked,site,device\n1,a,phone\n0,b,tv\n1,a,tv\n0,c,phone\n1,a,web\n")
    decl = {
        "source": "local",
        "protocol": {"name": "ctr", "fractions": [0.6, 0.2, 0.2]},
        "files": {"interactions": {"path": str(path),
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}},
        "label": {"column": "clicked"},
        "fields": {"site": {"source": "context", "kind": "sparse"},
                   "device": {"source": "context", "kind": "sparse"}},
    }  # fmt: skip
    spec = parse_dataset("mine", decl, REGISTERED)
    interactions, users, _ = canonical_tables(spec, fetch_dataset(spec, tmp_path / "raw"))
    assert users["user_id"].tolist() == [0]  # one placeholder user
    assert interactions["label"].tolist() == [1, 0, 1, 0, 1]
    assert interactions["timestamp"].tolist() == [0, 1, 2, 3, 4]  # file order
    split = split_ctr(interactions, spec.fields, seed=0, fractions=(0.6, 0.2, 0.2))
    # train rows 0-2: site {a, b} -> 1, 2; device {phone, tv} -> 1, 2
    assert split.train.codes.tolist() == [[1, 1], [2, 2], [1, 2]]
    assert split.val.codes.tolist() == [[0, 1]]  # site c never seen in train
    assert split.test.codes.tolist() == [[1, 0]]  # device web never seen in train
    assert split.test.labels.tolist() == [1.0]


def test_checkpoint_best_with_a_monitor_that_is_never_finite_is_an_error(criteo, tmp_path):
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1)
    split.val.labels[:] = 0.0  # one class only: validation AUC is NaN at every epoch
    with pytest.raises(TrainingError, match=r"no validation gave a finite auc .* no checkpoint"):
        train(_cfg("lr", checkpoint="best", epochs=2, min_epochs=2), split, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_group_auc_over_the_declared_group_field(criteo, tmp_path):
    spec, interactions = criteo
    split = split_ctr(interactions, spec.fields, seed=1, group="C2")
    n_train = len(split.train.labels)
    raw = interactions["C2"].to_numpy(dtype=object)[n_train + len(split.val.labels) :]
    groups = split.test.groups
    assert split.train.groups is None and len(groups) == len(split.test.labels)
    # one id per raw value (not per code: values too rare for a code keep their own group)
    missing = pd.isna(raw)
    assert (groups[missing] == 0).all() and (groups[~missing] != 0).all()
    present = pd.Series(raw[~missing]).astype(str)
    assert present.groupby(groups[~missing]).nunique().max() == 1
    assert len(np.unique(groups[~missing])) == present.nunique()

    train(_cfg("deepfm", monitor="gauc"), split, tmp_path / "m.pt")
    scorer, payload = load_model(tmp_path / "m.pt")
    assert "gauc" in payload["val"]
    result = evaluate_rows(scorer, split.test)
    total = weight = 0.0
    for g in np.unique(groups[~missing]):
        mine = groups == g
        if 0 < result.labels[mine].sum() < mine.sum():
            total += mine.sum() * roc_auc_score(result.labels[mine], result.logits[mine])
            weight += mine.sum()
    assert weight > 0 and result.metrics["gauc"] == pytest.approx(total / weight, abs=1e-12)
    assert list(result.metrics) == ["auc", "logloss", "gauc", "rows"]


def test_a_gzipped_criteo_1tb_day_file_is_read_as_it_is(tmp_path):
    """The Criteo 1TB release ships day_0.gz ... day_23.gz in the Kaggle layout."""
    import gzip

    from deepfm.data.clicklogs import stream_click_log

    plain = make_criteo_file(tmp_path / "train.txt", n_rows=60)
    packed = tmp_path / "day_0.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    n = stream_click_log("criteo", packed, tmp_path / "gz.parquet", chunk_lines=25)
    stream_click_log("criteo", plain, tmp_path / "plain.parquet", chunk_lines=25)
    assert n == 60
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "gz.parquet"), pd.read_parquet(tmp_path / "plain.parquet")
    )
    pd.testing.assert_frame_equal(parse_criteo(packed), parse_criteo(plain))
    lines = plain.read_text().splitlines(keepends=True)
    lines[41] = "1\t2\n"
    packed.write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(ParseError, match=r"day_0\.gz, line 42: 2 fields, expected 40"):
        stream_click_log("criteo", packed, tmp_path / "bad.parquet", chunk_lines=25)
    assert not (tmp_path / "bad.parquet").exists()
