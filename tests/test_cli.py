"""The `deepfm` command and the package functions under it (deepfm.serving): a user's top-K,
scores for a file of rows, evaluation of any checkpoint (the eval stage's numbers exactly),
the model card, and one clear line for each mistake a user can make.

A tiny synthetic MovieLens-100K (40 users, 60 items) with a 2-epoch DeepFM, built once."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from deepfm import command, serving
from deepfm.config import parse_config
from deepfm.data.movielens import load_canonical
from deepfm.data.splitting import read_split, split_dataset, write_split
from deepfm.io import read_npy, write_npy
from deepfm.models.checkpoint import data_fingerprint, load_model
from deepfm.training.loop import train
from tests.conftest import ML_FIELDS, REPO, make_ml100k_files

HISTORY = 4


def _cfg(**train_changes):
    base = {"epochs": 2, "min_epochs": 1, "batch_size": 64, "num_threads": 1, "val_every": 1}
    return parse_config(
        {
            "seed": 3,
            "train": {**base, **train_changes},
            "deepfm": {"embed_dim": 4, "dnn_hidden": [8]},
        }
    )


def _build(root: Path, n_users=40, n_items=60, seed=0) -> SimpleNamespace:
    interactions, users, items = load_canonical(
        "ml-100k", make_ml100k_files(root / "raw", n_users, n_items, seed=seed), 4, 1980
    )
    processed = root / "processed"
    processed.mkdir()
    items.to_parquet(processed / "items.parquet", index=False)
    split = split_dataset(
        interactions, users, items, fields=ML_FIELDS, seed=7, min_positives=3,
        num_negatives=30, history_length=HISTORY, sequence="rated",
    )  # fmt: skip
    write_split(split, root / "split")
    train(_cfg(), read_split(root / "split"), root / "model.pt", progress=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["num_threads"] = 1
    params["eval"]["batch_users"] = 7  # several blocks of users
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return SimpleNamespace(
        root=root,
        split=root / "split",
        checkpoint=root / "model.pt",
        processed=processed,
        params=root / "params.yaml",
        interactions=interactions,
        users=users,
        items=items,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("cli"))


def run(argv, capsys) -> tuple[int, str, str]:
    code = command.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def where(w) -> list:
    return ["--checkpoint", w.checkpoint, "--split", w.split]


def rated_ids(w, user: int) -> set[int]:
    """Every item the user rated, from the canonical table (not from the split)."""
    return set(w.interactions.loc[w.interactions.user_id == user, "item_id"].tolist())


# --- the user's inputs as of the end of their data --------------------------------------


def test_latest_history_is_the_users_last_ratings_of_all_splits(world):
    """`latest` holds, per user, the item_id codes of their HISTORY most recent ratings
    (split.sequence: rated) in the protocol's order (timestamp, then item_id), the held-out
    ones included, most recent first: worked out here from the canonical table."""
    split = read_split(world.split)
    code_of = split.item_features[:, split.schema.field("item_id").column]
    item_index = {i: k for k, i in enumerate(split.item_ids.tolist())}
    for u, user in enumerate(split.user_ids.tolist()):
        rows = world.interactions[world.interactions.user_id == user]
        last = rows.sort_values(["timestamp", "item_id"]).item_id.tolist()[::-1][:HISTORY]
        want = [int(code_of[item_index[i]]) for i in last] + [0] * (HISTORY - len(last))
        assert split.latest[u].tolist() == want, user
    # the held-out items are in it: the test item is the most recent positive
    u = int(split.test.users[0])
    assert code_of[split.test.items[0]] in split.latest[u]


# --- recommend ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", [1, 7, 23])
def test_recommend_gives_k_unrated_items_best_first(world, user):
    served = serving.load(world.checkpoint, world.split)
    titles = serving.item_titles(world.processed, served.split.item_ids)
    top = serving.recommend(served, str(user), 10, titles)
    assert top["rank"].tolist() == list(range(1, 11))
    assert not set(top.item_id.tolist()) & rated_ids(world, user)
    assert (np.diff(top.score.to_numpy()) <= 0).all()
    np.testing.assert_allclose(top.score, 1 / (1 + np.exp(-top.logit)), rtol=1e-12)
    title = dict(zip(world.items.item_id, world.items.title, strict=True))
    assert top.title.tolist() == [title[i] for i in top.item_id]
    # the same top 10 by scoring every unrated item pair by pair (forward, not score_matrix)
    u = int(np.flatnonzero(served.split.user_ids == user)[0])
    n = served.split.schema.num_items
    history = torch.from_numpy(np.repeat(served.split.latest[u : u + 1], n, axis=0))
    with torch.inference_mode():
        logits = served.model(torch.full((n,), u), torch.arange(n), history).double().numpy()
    unrated = [k for k in range(n) if served.split.item_ids[k] not in rated_ids(world, user)]
    best = sorted(unrated, key=lambda k: -logits[k])[:10]
    assert top.item_id.tolist() == served.split.item_ids[best].tolist()
    np.testing.assert_allclose(top.logit, logits[best], atol=1e-5)


def test_recommend_prints_titles_and_scores(world, capsys):
    code, out, err = run(["recommend", "--user", 5, "-k", 3, *where(world),
                          "--processed", world.processed], capsys)  # fmt: skip
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("top 3 for user 5 by deepfm (epoch 2; the ")
    assert f"the {len(rated_ids(world, 5))} items they rated excluded" in lines[0]
    assert lines[1].split() == ["rank", "item_id", "score", "title"]
    top = serving.recommend(serving.load(world.checkpoint, world.split), 5, 3)
    title = dict(zip(world.items.item_id, world.items.title, strict=True))
    for line, row in zip(lines[2:], top.itertuples(), strict=True):
        assert line.split(maxsplit=3) == [
            str(row.rank),
            str(row.item_id),
            f"{row.score:.4f}",
            title[row.item_id],
        ]
    code, out, _ = run(["recommend", "--user", 5, "-k", 3, *where(world), "--format", "csv",
                        "--processed", world.processed], capsys)  # fmt: skip
    assert out.splitlines()[0] == "rank,item_id,title,score,logit"


# --- score -------------------------------------------------------------------------------


def test_score_gives_each_row_its_probability(world, capsys, tmp_path):
    served = serving.load(world.checkpoint, world.split)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,item_id,note\n5,1,a\n5,2,b\n12,60,c\n5,1,a\n")
    code, out, err = run(["score", pairs, *where(world)], capsys)
    assert code == 0 and err == ""
    got = pd.read_csv(pd.io.common.StringIO(out))
    assert got.columns.tolist() == ["user_id", "item_id", "note", "probability", "logit"]
    assert got.note.tolist() == ["a", "b", "c", "a"]
    split = served.split
    u = np.searchsorted(split.user_ids, [5, 5, 12, 5])
    i = np.searchsorted(split.item_ids, [1, 2, 60, 1])
    inputs = torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(split.latest[u])
    with torch.inference_mode():
        logits = served.model(*inputs).double().numpy()
    np.testing.assert_allclose(got.logit, logits, rtol=1e-6)
    np.testing.assert_allclose(got.probability, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert got.probability[0] == got.probability[3]
    # what recommend shows for an item, score gives for the pair
    top = serving.recommend(served, 12, 1)
    one = serving.score_rows(served, pd.DataFrame({"user_id": [12], "item_id": [top.item_id[0]]}))
    assert one.probability[0] == pytest.approx(top.score[0], abs=1e-6)
    # --out: the same rows, written atomically, nothing on stdout
    code, out2, err = run(["score", pairs, *where(world), "--out", tmp_path / "o.csv"], capsys)
    assert code == 0 and out2 == "" and err == f"scored 4 rows -> {tmp_path / 'o.csv'}\n"
    assert (tmp_path / "o.csv").read_text() == out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- evaluate: the eval stage's numbers --------------------------------------------------


def test_evaluate_reproduces_the_eval_stage_exactly(world, capsys, tmp_path):
    stage = subprocess.run(
        [sys.executable, str(REPO / "src/stages/evaluate.py"), "--split", str(world.split),
         "--model", str(world.checkpoint), "--metrics", str(tmp_path / "stage.json"),
         "--ranks", str(tmp_path / "stage.parquet")],
        cwd=world.root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert stage.returncode == 0, stage.stderr
    code, out, _ = run(["evaluate", *where(world), "--params", world.params,
                        "--out", tmp_path / "cli.json", "--ranks", tmp_path / "cli.parquet"],
                         capsys)  # fmt: skip
    assert code == 0
    assert (tmp_path / "cli.json").read_bytes() == (tmp_path / "stage.json").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "cli.parquet"), pd.read_parquet(tmp_path / "stage.parquet")
    )
    metrics = json.loads((tmp_path / "stage.json").read_text())
    assert metrics["test"]["users"] > 30 and 0 < metrics["test"]["full_ndcg@10"] < 1
    printed = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    for key, value in metrics["test"].items():
        assert printed[key] == [str(metrics["val"][key]), str(value)]
    assert out.splitlines()[0] == f"{world.checkpoint}: deepfm, epoch 2, on {world.split}"


# --- info --------------------------------------------------------------------------------


def test_info_is_the_model_card(world, capsys, tmp_path):
    model, payload = load_model(world.checkpoint)
    split = read_split(world.split)
    metrics = tmp_path / "eval.json"
    run(["evaluate", *where(world), "--params", world.params, "--out", metrics], capsys)
    card = serving.model_card(world.checkpoint, world.split, metrics, lock=tmp_path / "none")
    assert card["model"] == "deepfm" and card["epoch"] == 2 and card["seed"] == 3
    assert card["parameters"] == model.num_parameters() > 0
    assert card["model_params"]["embed_dim"] == 4
    assert card["data"]["fingerprint"] == data_fingerprint(split) == payload["data"]
    assert card["data"]["split"]["matches"] is True
    assert card["data"]["users"] == 40 and card["data"]["items"] == 60
    assert card["metrics"]["of_this_checkpoint"] is True
    assert card["metrics"]["test"] == json.loads(metrics.read_text())["test"]
    assert card["environment"]["torch"] == torch.__version__.split("+")[0]
    text = command.render_card(card)
    assert f"data hash    {payload['data']} (sha256" in text
    assert "deepfm, " in text and "epoch 2, seed 3" in text
    assert "(of this checkpoint), test: full_ndcg@10" in text
    # metrics of another checkpoint are said to be
    other = json.loads(metrics.read_text())
    other["checkpoint_epoch"] = 1
    metrics.write_text(json.dumps(other))
    card = serving.model_card(world.checkpoint, world.split, metrics)
    assert card["metrics"]["of_this_checkpoint"] is False
    assert "of ANOTHER checkpoint" in command.render_card(card)
    code, out, _ = run(["info", *where(world), "--metrics", metrics, "--json"], capsys)
    assert code == 0 and json.loads(out)["data"]["fingerprint"] == payload["data"]


# --- one line for each mistake -----------------------------------------------------------


def _flipped_split(w, tmp_path) -> Path:
    """The same split with one train label flipped: the same schema, other rows."""
    import shutil

    copy = tmp_path / "flipped"
    shutil.copytree(w.split, copy)
    labels = read_npy(copy / "train_labels.npy").copy()
    labels[0] = 1 - labels[0]
    write_npy(copy / "train_labels.npy", labels)
    return copy


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("other"), n_users=30, n_items=50, seed=1)


def test_each_mistake_is_one_line_with_the_fix(world, other_dataset, capsys, tmp_path):
    pairs = tmp_path / "pairs.csv"
    cases = [
        (["recommend", "--user", 99999, *where(world)],
         f"user 99999 is not in the split in {world.split} (40 users, ids 1..40): pass a user "
         "id of this dataset."),
        (["recommend", "--user", "abc", *where(world)], "user abc is not in the split in"),
        (["recommend", "--user", 1, "-k", 0, *where(world)], "-k 0: ask for at least one item."),
        (["recommend", "--user", 1, "--checkpoint", tmp_path / "no.pt", "--split", world.split],
         f"checkpoint {tmp_path / 'no.pt'} not found: train one with `dvc repro` (or `make "
         "repro`), or pass an existing one with --checkpoint PATH."),
        (["recommend", "--user", 1, "--checkpoint", world.checkpoint, "--split", tmp_path],
         f"no split in {tmp_path}: run `dvc repro` (or `make repro`) first, or pass the folder "
         "of one with --split."),
        (["recommend", "--user", 1, "--checkpoint", other_dataset.checkpoint, "--split",
          world.split],
         f"{other_dataset.checkpoint} was trained on another dataset (ml-100k) than the split "
         f"in {world.split} (checkpoint: 30 users x 50 items"),
        (["evaluate", "--checkpoint", other_dataset.checkpoint, "--split", world.split,
          "--params", world.params], "was trained on another dataset (ml-100k) than the split"),
        (["recommend", "--user", 1, "--checkpoint", world.checkpoint, "--split",
          _flipped_split(world, tmp_path)],
         "was trained on other rows than the split in"),
        (["score", tmp_path / "none.csv", *where(world)],
         f"{tmp_path / 'none.csv'} not found: pass a CSV file with a header line, or - (stdin)."),
        (["score", pairs, *where(world)],
         "pairs.csv has no column user_id, item_id (its columns: user, item); it needs "
         "user_id,item_id."),
        (["score", tmp_path / "unknown.csv", *where(world)],
         "unknown.csv line 3: item 61 is not in the dataset (60 items, ids 1..60); score only "
         "items the model knows."),
        (["info", "--checkpoint", tmp_path / "no.pt", "--split", world.split],
         f"checkpoint {tmp_path / 'no.pt'} not found"),
        (["info", "--checkpoint", pairs, "--split", world.split],
         f"{pairs} is not a checkpoint written by the train stage ("),
    ]  # fmt: skip
    pairs.write_text("user,item\n1,2\n")
    (tmp_path / "unknown.csv").write_text("user_id,item_id\n1,2\n1,61\n")
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        assert code == 1, argv
        assert out == "" and err.count("\n") == 1 and err.startswith("error: "), (argv, err)
        assert message in err, (argv, err)


def test_the_command_runs_as_a_module_without_a_traceback(world, tmp_path):
    base = [sys.executable, "-m", "deepfm"]
    ok = subprocess.run([*base, "recommend", "--user", "3", "-k", "2", *map(str, where(world)),
                         "--processed", str(world.processed)],
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 4, ok.stderr
    bad = subprocess.run([*base, "recommend", "--user", "3", "--checkpoint",
                          str(tmp_path / "x.pt")], capture_output=True, text=True,
                         cwd=REPO, check=False)  # fmt: skip
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith(f"error: checkpoint {tmp_path / 'x.pt'} not found")
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"deepfm": "deepfm.command:main"}


# --- the ctr protocol: rows of a click log -----------------------------------------------


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    from deepfm.data.canonical import canonical_tables, fetch_dataset
    from deepfm.data.declaration import parse_dataset
    from deepfm.data.rowsplit import split_ctr
    from tests.conftest import criteo_declaration, make_criteo_file

    root = tmp_path_factory.mktemp("ctr")
    decl = criteo_declaration(make_criteo_file(root / "t.txt", n_rows=3000))
    spec = parse_dataset("c", decl, ("criteo", "avazu", "ml-100k"))
    interactions, _, _ = canonical_tables(spec, fetch_dataset(spec, root / "raw"))
    write_split(split_ctr(interactions, spec.fields, seed=1), root / "split")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] = "fm"
    raw["train"].update(epochs=2, min_epochs=2, batch_size=256, monitor="auc", num_threads=1)
    train(parse_config(raw, require_all=True), read_split(root / "split"), root / "fm.pt",
          progress=False)  # fmt: skip
    return SimpleNamespace(root=root, split=root / "split", checkpoint=root / "fm.pt",
                           spec=spec, interactions=interactions)  # fmt: skip


def test_score_under_ctr_encodes_raw_fields_as_the_split_did(click_log, capsys, tmp_path):
    from deepfm.evaluation.rows import evaluate_rows

    names = [f.name for f in click_log.spec.fields]
    rows = click_log.interactions[names].tail(40)  # the test part (split by order)
    rows.to_csv(tmp_path / "rows.csv", index=False)  # as text, missing values empty
    code, out, err = run(["score", tmp_path / "rows.csv", "--checkpoint", click_log.checkpoint,
                          "--split", click_log.split], capsys)  # fmt: skip
    assert code == 0, err
    got = pd.read_csv(pd.io.common.StringIO(out))
    assert len(got) == 40 and got.columns.tolist()[-2:] == ["probability", "logit"]
    model, _ = load_model(click_log.checkpoint)
    want = evaluate_rows(model, read_split(click_log.split).test).logits[-40:]
    np.testing.assert_allclose(got.logit, want, rtol=1e-5, atol=1e-6)
    # the encoding itself: the split's codes of those rows, from the raw values
    served = serving.load(click_log.checkpoint, click_log.split)
    from deepfm.data.fields import encode_new_context

    codes = np.stack(
        [encode_new_context(rows[n].astype(str).where(rows[n].notna(), ""),
                            served.split.vocabs[n]) for n in names], axis=1
    )  # fmt: skip
    np.testing.assert_array_equal(codes, served.split.test.codes[-40:])
    # recommend is top-K only; a row without every field is refused
    code, _, err = run(["recommend", "--user", 0, "--checkpoint", click_log.checkpoint,
                        "--split", click_log.split], capsys)  # fmt: skip
    assert code == 1 and "`recommend` ranks items for a user (the top-K protocol)" in err
    rows.drop(columns=["C7"]).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = run(["score", tmp_path / "short.csv", "--checkpoint", click_log.checkpoint,
                        "--split", click_log.split], capsys)  # fmt: skip
    assert code == 1 and "short.csv has no column C7 (its columns: I1, " in err


# --- a top-K dataset with a context field (the device of each rating) --------------------


def test_a_context_field_is_the_users_last_unless_the_file_gives_it(tmp_path):
    from deepfm.data.canonical import canonical_tables, fetch_dataset
    from deepfm.data.declaration import parse_dataset
    from deepfm.data.fields import encode_new_context
    from deepfm.io import save_checkpoint
    from deepfm.models import build_model
    from deepfm.models.checkpoint import checkpoint_payload
    from tests.conftest import make_synthetic_ratings, synthetic_declaration

    csv = make_synthetic_ratings(tmp_path / "r.csv", n_users=30, n_items=40, per_user=12)
    spec = parse_dataset("synth", synthetic_declaration(csv), ("ml-100k",))
    interactions, users, items = canonical_tables(spec, fetch_dataset(spec, tmp_path / "raw"))
    written = split_dataset(interactions, users, items, fields=spec.fields, seed=1,
                            min_positives=3, num_negatives=5, history_length=HISTORY)  # fmt: skip
    write_split(written, tmp_path / "split")
    split = read_split(tmp_path / "split")
    assert split.vocabs == written.vocabs
    values = split.vocabs["device"]["values"]
    assert values == ["phone", "tv", "web"]
    # each user's context: the device of their last rating (timestamp, then item id)
    last = interactions.sort_values(["user_id", "timestamp", "item_id"]).groupby("user_id").last()
    want = [values.index(last.device[u]) + 1 for u in split.user_ids]
    assert split.latest[:, HISTORY].tolist() == want
    # raw values -> the split's codes, an unseen one -> 0
    codes = encode_new_context(pd.Series(["tv", "fridge", "phone", ""]), split.vocabs["device"])
    assert codes.tolist() == [2, 0, 1, 0]

    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema,
                        {k: torch.from_numpy(v) for k, v in split.features.items()},
                        cfg.model_params)  # fmt: skip
    save_checkpoint(tmp_path / "m.pt",
                    checkpoint_payload(cfg, model, 0, {}, data_fingerprint(split)))  # fmt: skip
    served = serving.load(tmp_path / "m.pt", tmp_path / "split")
    user, item = split.user_ids[0], split.item_ids[0]
    own = last.device[user]
    other = next(d for d in values if d != own)
    rows = pd.DataFrame({"user_id": [user] * 3, "item_id": [item] * 3})
    plain = serving.score_rows(served, rows)
    given = serving.score_rows(served, rows.assign(device=[own, other, "fridge"]))
    assert given.logit[0] == plain.logit[0]  # their own last device: the default
    assert given.logit[1] != plain.logit[0] and given.logit[2] != plain.logit[0]


def test_deepfm_report_hands_its_arguments_to_the_results_cli(tmp_path, capsys):
    bad = tmp_path / "exp.json"
    bad.write_text("not json")
    assert command.main(["report", "table", "--from-json", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {bad} as `dvc exp show --json` output")
    with pytest.raises(SystemExit):
        command.main(["report", "-h"])
    assert capsys.readouterr().out.startswith(
        "usage: deepfm report [-h] {table,compare,figures,export,sweep}"
    )


def test_version_licence_and_citation_agree():
    import deepfm

    done = subprocess.run([sys.executable, "-m", "deepfm", "--version"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout == f"deepfm {deepfm.__version__}\n"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == deepfm.__version__ and project["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert str(citation["version"]) == deepfm.__version__
    assert {"title", "message", "authors", "type"} <= set(citation)
    titles = " / ".join(r["title"] for r in citation["references"])
    for paper in ("DeepFM", "xDeepFM", "AutoInt", "Self-Attentive Sequential", "Embarrassingly",
                  "MovieLens Datasets"):  # fmt: skip
        assert paper in titles
    assert all(r["doi"].startswith("10.") and r["authors"] for r in citation["references"])


def test_usage_errors_exit_2_and_runtime_errors_exit_1(capsys, tmp_path):
    for argv in (["recommend", "--frobnicate"], ["nonsense"], ["report", "table", "--bad"]):
        with pytest.raises(SystemExit) as exit_:
            command.main(argv)
        assert exit_.value.code == 2, argv
        assert capsys.readouterr().err.splitlines()[-1].startswith(("deepfm", "usage")), argv
    code = command.main(["info", "--checkpoint", str(tmp_path / "none.pt")])
    assert code == 1 and capsys.readouterr().err.startswith("error: checkpoint ")
