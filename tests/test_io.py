import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from deepfm.config import DeepFMConfig, parse_config
from deepfm.data.batches import feature_tensors
from deepfm.io import atomic_path, load_checkpoint, write_json
from deepfm.models import build_model
from deepfm.models.checkpoint import checkpoint_payload, load_model
from tests.conftest import REPO


def test_checkpoint_round_trip_weights_only(split, tmp_path):
    torch.manual_seed(0)
    cfg = parse_config({"deepfm": {"embed_dim": 4, "dnn_hidden": [8], "field_dims": {"gender": 2}}})
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params)
    model.eval()
    path = tmp_path / "model.pt"
    from deepfm.io import save_checkpoint

    save_checkpoint(path, checkpoint_payload(cfg, model, 3, {"full_ndcg@10": 0.1}))
    payload = torch.load(path, weights_only=True)  # no pickle of arbitrary objects
    assert payload["epoch"] == 3 and payload["model"] == "deepfm"
    loaded, _ = load_model(path)
    assert isinstance(loaded.embedding.dim, int) and loaded.embedding.dim == 4
    u, i, h = torch.arange(5), torch.arange(5), torch.from_numpy(split.train_history[:5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(u, i, h), model(u, i, h))
    assert load_checkpoint(path)["model_params"] == {
        "embed_dim": 4,
        "dnn_hidden": [8],
        "dropout": DeepFMConfig().dropout,
        "batch_norm": True,
        "recent_items": DeepFMConfig().recent_items,
        "history_pooling": DeepFMConfig().history_pooling,
        "history_layers": 1,
        "loss": "bce",
        "field_dims": {"gender": 2},
        "history_length": 0,
        "catalogue_weight": 0.0,
    }
    assert loaded.embedding.own_tables["gender"].weight.shape[1] == 2


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_killed_writer_never_leaves_a_truncated_file(tmp_path):
    target = tmp_path / "big.json"
    write_json(target, {"old": True})
    script = textwrap.dedent(f"""
        import time
        from deepfm.io import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as f:
                f.write("x" * 1000)
                f.flush()
                print("writing", flush=True)
                time.sleep(30)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # this checkout's code
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_text() == '{\n  "old": true\n}\n'


def test_identical_checkpoints_are_identical_bytes(tmp_path):
    from deepfm.io import save_checkpoint

    payload = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    save_checkpoint(tmp_path / "a.pt", payload)
    save_checkpoint(tmp_path / "b.pt", payload)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
