"""Multi-process training (torch DDP, train.processes): the shards, the guards, and two real
2-process gloo runs through torchrun: the same model as one process (dropout 0, no
BatchNorm), and a rank killed mid-epoch (a fast, clear failure, then an exact resume).

The torchrun runs cost about 5 s each (two processes of one thread each import torch); they
need two physical cores."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import pytest
import torch

from deepfm.config import ConfigError, parse_config
from deepfm.data.batches import iterate_batches
from deepfm.io import load_checkpoint
from deepfm.training import distributed
from deepfm.training.distributed import Shard
from deepfm.training.loop import TrainingError, train
from deepfm.utils import physical_cores
from tests.conftest import ML_FIELDS, Recorder, make_ml100k_files

WORKER = Path(__file__).with_name("ddp_worker.py")
two_cores = pytest.mark.skipif(physical_cores() < 2, reason="2 processes need 2 physical cores")


def _params(**train) -> dict:
    base = {"epochs": 4, "min_epochs": 1, "patience": 10, "batch_size": 64, "num_threads": 1}
    return {"seed": 3, "train": {**base, **train}, "deepfm": {"embed_dim": 4, "dnn_hidden": [8]}}


# --- the shards ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "world"), [(64, 2), (7, 2), (5, 3), (2048, 8), (3, 3)])
def test_shards_tile_each_batch_and_weigh_to_its_mean(rows, world):
    shards = [Shard(r, world) for r in range(world)]
    bounds = [s.bounds(rows) for s in shards]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    # DDP averages the ranks' gradients: sum(weight_r / world * mean_r) is the batch mean
    for s in shards:
        s.rows = rows
    parts = torch.randn(rows).split(sizes)
    ddp = sum(s.weight(len(p)) * p.mean() for s, p in zip(shards, parts, strict=True)) / world
    assert math.isclose(float(ddp), float(torch.cat(parts).mean()), rel_tol=1e-6, abs_tol=1e-7)
    assert Shard(0, 1, rows=rows).weight(rows) == 1.0  # one process: exactly its loss


def test_ranks_take_their_part_of_the_same_batches():
    data = (torch.arange(101), torch.arange(101) * 10)
    whole = list(iterate_batches(data, 16, torch.Generator().manual_seed(3)))
    parts = []
    for rank in range(3):
        shard = Shard(rank, 3)
        got = []
        for batch in iterate_batches(data, 16, torch.Generator().manual_seed(3), shard):
            got.append((batch, shard.rows))
        parts.append(got)
    assert [len(p) for p in parts] == [len(whole)] * 3
    for i, batch in enumerate(whole):
        assert all(p[i][1] == len(batch[0]) for p in parts)  # the global batch's size
        for t in range(2):
            joined = torch.cat([p[i][0][t] for p in parts])
            assert torch.equal(joined, batch[t])


def test_a_last_batch_too_small_for_every_rank_is_refused_before_the_first_step():
    data = (torch.arange(65),)  # batches of 32, 32, 1
    batches = iterate_batches(data, 32, torch.Generator().manual_seed(0), Shard(1, 2))
    with pytest.raises(TrainingError, match=r"batch of 1 rows.*train.batch_size \(e\.g\. 31\)"):
        next(batches)
    bn = iterate_batches((torch.arange(67),), 32, torch.Generator(), Shard(0, 2, min_rows=2))
    with pytest.raises(TrainingError, match=r"2 rows \(BatchNorm\)"):
        next(bn)  # the last batch of 3 leaves one rank 1 row
    assert len(list(iterate_batches((torch.arange(68),), 32, torch.Generator(), Shard(0, 2)))) == 3


# --- the guards ---------------------------------------------------------------------------


def test_processes_is_validated_and_defaults_to_one():
    assert parse_config({}).train.processes == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=r"train\.processes"):
            parse_config({"train": {"processes": bad}})


def test_several_processes_outside_torchrun_say_how_to_launch(split, tmp_path, monkeypatch):
    for name in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TrainingError, match=r"'train\.processes' is 2.*torchrun"):
        train(parse_config(_params(processes=2)), split, tmp_path / "m.pt", progress=False)


def test_a_torchrun_world_other_than_train_processes_is_refused(split, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(TrainingError, match=r"torchrun started 2 processes.*'train\.processes'"):
        train(parse_config(_params()), split, tmp_path / "m.pt", progress=False)


def test_launch_refuses_more_processes_than_cores(monkeypatch):
    monkeypatch.setattr(distributed, "physical_cores", lambda: 2)
    tc = parse_config(_params(processes=3)).train
    with pytest.raises(TrainingError, match=r"'train\.processes' is 3 but this machine has 2"):
        distributed.launch(tc, WORKER, [])


def test_sparse_gradients_across_gpus_are_refused():
    tc = parse_config(_params(processes=2, sparse_embeddings=True)).train
    with pytest.raises(TrainingError, match=r"NCCL cannot all-reduce.*sparse_embeddings"):
        distributed.check_supported(tc, torch.device("cuda", 0), 2)
    distributed.check_supported(tc, torch.device("cpu"), 2)  # gloo all-reduces them


# --- two real gloo processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    from deepfm.data.movielens import load_canonical
    from deepfm.data.splitting import split_dataset, write_split

    folder = tmp_path_factory.mktemp("ddp")
    canonical = load_canonical("ml-100k", make_ml100k_files(folder / "ml-100k"), 4, 1980)
    split = split_dataset(*canonical, fields=ML_FIELDS, seed=7, min_positives=3,
                          num_negatives=30, history_length=4)  # fmt: skip
    write_split(split, folder / "split")
    return folder / "split"


def _run_ranks(params: dict, split_dir: Path, out: Path, resume=None, kill=None) -> dict:
    """train() in 2 gloo processes (torchrun, via distributed.launch); rank 0's rows."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "params": params, "split": str(split_dir), "model": str(out / "m.pt"),
        "rows": str(out / "rows.json"), "resume": str(resume) if resume else None, "kill": kill,
    }  # fmt: skip
    (out / "spec.json").write_text(json.dumps(spec))
    distributed.launch(parse_config(params).train, WORKER, [str(out / "spec.json")])
    return json.loads((out / "rows.json").read_text())


def _batch_size_with_uneven_last_batch(split_dir: Path, start: int) -> int:
    """A batch size from `start` whose epoch ends in a batch of an odd size >= 5: the ranks'
    shards of it differ in size (the loss weights matter) and hold >= 2 rows (BatchNorm)."""
    from deepfm.data.splitting import read_split

    examples = int((read_split(split_dir).train_labels == 1).sum()) * 5  # 4 negatives each
    return next(b for b in range(start, start + 100) if examples % b % 2 and examples % b >= 5)


@two_cores
@pytest.mark.parametrize("device_epochs", [False, True])
def test_two_gloo_processes_train_what_one_process_trains(split_dir, tmp_path, device_epochs):
    """device_epochs: every rank draws the epoch's negatives with its own seeded torch
    generator, and still trains its part of the single process's epoch."""
    from deepfm.data.splitting import read_split

    batch = _batch_size_with_uneven_last_batch(split_dir, 64)
    params = _params(batch_size=batch, device_epochs=device_epochs)
    params["deepfm"] |= {"dropout": 0.0, "batch_norm": False}
    one = Recorder()
    train(parse_config(params), read_split(split_dir), tmp_path / "one.pt", live=one,
          progress=False)  # fmt: skip
    two = _run_ranks({**params, "train": {**params["train"], "processes": 2}}, split_dir,
                     tmp_path / "two")  # fmt: skip
    assert two["threads"] == 1 and two["epochs_run"] == 4
    assert [sorted(r) for r in two["rows"]] == [sorted(r) for r in one.rows]
    for a, b in zip(one.rows, two["rows"], strict=True):
        for key in a:
            # to float rounding, as the weights below (a near-chance AUC moves with them)
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a, b)
    w1 = load_checkpoint(tmp_path / "one.pt")["state_dict"]
    w2 = load_checkpoint(tmp_path / "two" / "m.pt")["state_dict"]
    for key in w1:
        assert torch.allclose(w1[key].float(), w2[key].float(), rtol=1e-4, atol=1e-6), key


@two_cores
def test_a_killed_rank_fails_the_run_fast_and_a_rerun_resumes_exactly(split_dir, tmp_path, capfd):
    # dropout and BatchNorm on: each rank's dropout stream and rank 0's BatchNorm statistics
    # must come back exactly too
    batch = _batch_size_with_uneven_last_batch(split_dir, 64)
    params = _params(batch_size=batch, processes=2, epochs=5)
    clean = _run_ranks(params, split_dir, tmp_path / "clean")

    resume = tmp_path / "run" / "state.pt"
    start = time.monotonic()
    with pytest.raises(TrainingError, match=r"a training process failed.*rerunning"):
        _run_ranks(params, split_dir, tmp_path / "run", resume=resume, kill=[1, 3])
    assert time.monotonic() - start < 60
    said = capfd.readouterr()
    assert "exitcode  : -9" in said.err or "Signal 9" in said.err, said.err[-3000:]
    assert load_checkpoint(resume)["loop"]["epoch"] == 2  # epochs 1-2 done, 3 lost
    assert not (tmp_path / "run" / "rows.json").exists()

    again = _run_ranks(params, split_dir, tmp_path / "run", resume=resume)
    assert "resuming after epoch 2" in capfd.readouterr().out
    assert again["rows"] == clean["rows"]  # replayed history + resumed epochs, bit for bit
    assert not resume.exists()
    a = load_checkpoint(tmp_path / "clean" / "m.pt")
    b = load_checkpoint(tmp_path / "run" / "m.pt")
    assert a["epoch"] == b["epoch"] == 5 and a["val"] == b["val"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
