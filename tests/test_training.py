import math

import pytest
import torch

from deepfm.config import ConfigError, parse_config
from deepfm.io import load_checkpoint
from deepfm.models.checkpoint import load_model
from deepfm.training import loop, optim, resume
from deepfm.training.loop import TrainingError, train
from deepfm.training.monitor import check_monitor
from deepfm.training.objectives import Pointwise
from tests.conftest import Recorder


def _cfg(**train):
    base = {
        "epochs": 4, "min_epochs": 1, "patience": 10, "batch_size": 64, "num_threads": 1,
        "val_every": 1, "targets": "positives",
    }  # fmt: skip
    small = {"embed_dim": 4, "dnn_hidden": [8], "recent_items": 0, "history_pooling": "mean"}
    return parse_config({"seed": 3, "train": {**base, **train}, "deepfm": small})


def test_training_learns_and_keeps_the_best_epoch(split, tmp_path):
    live = Recorder()
    cfg = _cfg(epochs=6, checkpoint="best")
    out = train(cfg, split, tmp_path / "m.pt", live=live, progress=False)
    assert out.epochs_run == 6
    losses = [r["train/loss"] for r in live.rows]
    assert losses[-1] < losses[0]
    scores = [r["val/full_ndcg@10"] for r in live.rows]
    assert out.best_epoch == 1 + max(range(6), key=lambda i: (scores[i], -i))
    assert out.best_epoch < 6  # else this test could not tell "best" from "last"
    payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == out.kept_epoch == out.best_epoch
    assert math.isclose(payload["val"]["full_ndcg@10"], max(scores), abs_tol=1e-6)


def test_a_lower_is_better_monitor_keeps_the_epoch_with_the_lowest_value(split, tmp_path):
    live = Recorder()
    cfg = _cfg(epochs=6, checkpoint="best", monitor="logloss", learning_rate=0.01)
    out = train(cfg, split, tmp_path / "m.pt", live=live, progress=False)
    losses = [r["val/logloss"] for r in live.rows]
    assert out.best_epoch == 1 + min(range(6), key=lambda i: (losses[i], i))
    assert 1 < out.best_epoch < 6  # neither end of the curve: the direction decides it
    payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == out.kept_epoch == out.best_epoch
    assert math.isclose(payload["val"]["logloss"], min(losses), abs_tol=1e-6)


def test_a_lower_is_better_monitor_drives_early_stopping_and_the_plateau_scheduler(split, tmp_path):
    live = Recorder()
    cfg = _cfg(epochs=40, patience=3, checkpoint="best", monitor="logloss", learning_rate=0.01,
               scheduler="plateau", plateau_patience=0)  # fmt: skip
    out = train(cfg, split, tmp_path / "m.pt", live=live, progress=False)
    losses = [r["val/logloss"] for r in live.rows]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    assert out.best_epoch == best + 1 and out.epochs_run == best + 4
    assert out.stop_reason == "early stop: no better logloss for 3 epochs"
    # the rate is halved after each validation that did not lower the LogLoss, and only then
    lrs = [r["train/lr"] for r in live.rows]
    for i in range(1, len(losses)):
        lowered = losses[i] < min(losses[:i])
        assert lrs[i] == (lrs[i - 1] if lowered else lrs[i - 1] / 2), i
    assert lrs[best] == 0.01 and best >= 2


def test_a_monitor_at_another_k_is_validated_and_watched(split, tmp_path):
    live = Recorder()
    out = train(_cfg(epochs=4, checkpoint="best", monitor="ndcg@5"), split, tmp_path / "m.pt",
                live=live, progress=False)  # fmt: skip
    scores = [r["val/ndcg@5"] for r in live.rows]  # computed beside the curves' k = 10
    assert "val/full_ndcg@10" in live.rows[0] and "val/hr@5" in live.rows[0]
    assert out.best_epoch == 1 + max(range(4), key=lambda i: (scores[i], -i))


def test_checkpoint_last_keeps_the_final_weights(split, tmp_path):
    live = Recorder()
    out = train(_cfg(epochs=6, checkpoint="last"), split, tmp_path / "m.pt", live=live)
    scores = [r["val/full_ndcg@10"] for r in live.rows]
    payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == out.kept_epoch == 6
    assert out.best_epoch == 1 + max(range(6), key=lambda i: (scores[i], -i)) < 6
    assert math.isclose(payload["val"]["full_ndcg@10"], scores[-1], abs_tol=1e-6)
    # the saved weights are the final ones: re-scoring them reproduces the last validation
    model, _ = load_model(tmp_path / "m.pt")
    from deepfm.data.sampling import RatedIndex
    from deepfm.evaluation.ranking import evaluate_held_out

    rated = RatedIndex.of_train(split)
    again = evaluate_held_out(model, split.val, rated, ks=[10], batch_users=32)
    assert math.isclose(again.metrics["full_ndcg@10"], scores[-1], abs_tol=1e-6)


def test_val_every_validates_less_and_keeps_the_same_final_weights(split, tmp_path):
    every, sparse = Recorder(), Recorder()
    a = train(_cfg(epochs=7), split, tmp_path / "a.pt", live=every, progress=False)
    b = train(_cfg(epochs=7, val_every=3), split, tmp_path / "b.pt", live=sparse, progress=False)
    validated = [i + 1 for i, r in enumerate(sparse.rows) if "val/full_ndcg@10" in r]
    assert validated == [3, 6, 7]  # every 3rd epoch and always the last
    assert len(sparse.rows) == 7 and all("train/loss" in r for r in sparse.rows)
    # validation draws no randomness: training, and the kept last epoch, are unchanged
    assert [r["train/loss"] for r in sparse.rows] == [r["train/loss"] for r in every.rows]
    assert sparse.rows[6] == every.rows[6]
    assert a.kept_epoch == b.kept_epoch == 7
    wa, wb = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for key in wa["state_dict"]:
        assert torch.equal(wa["state_dict"][key], wb["state_dict"][key]), key
    # the best epoch is chosen among validated epochs only
    assert b.best_epoch in validated


def test_early_stopping_counts_epochs_and_stops_after_a_validation(split, tmp_path):
    live = Recorder()
    cfg = _cfg(epochs=40, min_epochs=1, patience=2, val_every=3, checkpoint="best")
    out = train(cfg, split, tmp_path / "m.pt", live=live, progress=False)
    assert out.stop_reason.startswith("early stop")
    assert out.epochs_run % 3 == 0 and out.epochs_run < 40
    assert out.epochs_run - out.best_epoch >= 2
    assert "val/full_ndcg@10" in live.rows[-1]
    assert load_checkpoint(tmp_path / "m.pt")["epoch"] == out.best_epoch


@pytest.mark.parametrize(
    ("scheduler", "val_every", "optimizer"),
    [
        ("none", 1, "adamw"),
        ("plateau", 1, "adamw"),
        ("cosine", 1, "adamw"),
        ("plateau", 3, "adamw"),
        ("cosine", 1, "sparse"),  # LazyAdam's row-wise state, sparse gradient clipping
    ],
)
def test_interrupted_run_resumes_to_identical_result(
    split, tmp_path, scheduler, val_every, optimizer
):
    chosen = {"optimizer": optimizer}
    if optimizer == "sparse":
        chosen = {"optimizer": "adam", "sparse_embeddings": True}
    cfg = _cfg(scheduler=scheduler, grad_clip=1.0, val_every=val_every, **chosen)
    clean = Recorder()
    train(cfg, split, tmp_path / "clean.pt", live=clean, progress=False)

    resume = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train(
            cfg,
            split,
            tmp_path / "resumed.pt",
            live=Recorder(interrupt_after=2),
            progress=False,
            resume_path=resume,
        )
    assert resume.is_file()
    (tmp_path / "resumed.pt").unlink(missing_ok=True)  # as DVC does before a rerun
    again = Recorder()
    train(cfg, split, tmp_path / "resumed.pt", live=again, progress=False, resume_path=resume)
    assert not resume.exists()
    assert again.rows == clean.rows  # the replayed history plus the resumed epochs
    a, b = load_checkpoint(tmp_path / "clean.pt"), load_checkpoint(tmp_path / "resumed.pt")
    assert a["epoch"] == b["epoch"] and a["val"] == b["val"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def _interrupted_after(epochs: int, cfg, split, tmp_path):
    """Run until a kill in epoch epochs + 1; the resume file then holds `epochs` epochs."""
    resume = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train(
            cfg,
            split,
            tmp_path / "m.pt",
            live=Recorder(interrupt_after=epochs + 1),
            progress=False,
            resume_path=resume,
        )
    assert resume.is_file()  # else the tests below could not fail
    return resume


def test_resume_state_of_other_params_is_ignored(split, tmp_path, capsys):
    resume = _interrupted_after(2, _cfg(), split, tmp_path)
    capsys.readouterr()
    resumed = Recorder()
    other = _cfg(learning_rate=0.01)
    train(other, split, tmp_path / "m.pt", live=resumed, progress=False, resume_path=resume)
    assert capsys.readouterr().err == (
        f"warning: the resume file {resume} was left by a run with other params or data; it "
        "is ignored and training starts from epoch 1.\n"
    )
    fresh = Recorder()
    train(other, split, tmp_path / "f.pt", live=fresh, progress=False)
    assert len(resumed.rows) == 4 and resumed.rows == fresh.rows
    # ... while the same params do resume from it: the file was usable
    resume = _interrupted_after(2, _cfg(), split, tmp_path)
    capsys.readouterr()
    train(_cfg(), split, tmp_path / "m.pt", live=Recorder(), progress=False, resume_path=resume)
    assert "resuming after epoch 2" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_resume_file_is_said_and_ignored(split, tmp_path, capsys, damage):
    resume = _interrupted_after(1, _cfg(), split, tmp_path)
    data = resume.read_bytes()
    resume.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(Exception) as why:  # what reading the file raises, named in the warning
        load_checkpoint(resume)
    capsys.readouterr()
    rows = Recorder()
    train(_cfg(), split, tmp_path / "m.pt", live=rows, progress=False, resume_path=resume)
    assert capsys.readouterr().err == (
        f"warning: the resume file {resume} cannot be read ({type(why.value).__name__}: "
        f"{why.value}); it is ignored and training starts from epoch 1.\n"
    )
    fresh = Recorder()
    train(_cfg(), split, tmp_path / "f.pt", live=fresh, progress=False)
    assert rows.rows == fresh.rows and not resume.exists()


def test_nan_loss_stops_and_keeps_best_checkpoint(split, tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    calls = {"n": 0}
    real = Pointwise.loss
    batches_per_epoch = math.ceil((split.train_labels.sum() * 5) / _cfg().train.batch_size)

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss, n = real(self, model, batch)
        return (loss * float("nan") if calls["n"] > 2 * batches_per_epoch else loss), n

    monkeypatch.setattr(Pointwise, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 3: the training loss is nan.*kept"):
        train(_cfg(), split, path, progress=False)
    kept = load_checkpoint(path)
    assert kept["epoch"] in (1, 2)
    model, _ = load_model(path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_requested_without_gpu_is_a_clear_error(split, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingError, match=r"'train\.device' is 'cuda'.*'cpu' or 'auto'"):
        train(_cfg(device="cuda"), split, tmp_path / "m.pt", progress=False)


def test_itempop_needs_no_training(split, tmp_path):
    cfg = parse_config({"model": "itempop"})
    out = train(cfg, split, tmp_path / "m.pt", progress=False)
    assert out.epochs_run == 0 and out.best_val["users"] == len(split.val.users)
    assert load_model(tmp_path / "m.pt")[0].item_logits.abs().sum() > 0


def test_amp_off_cuda_is_a_clear_error(split, tmp_path):
    with pytest.raises(TrainingError, match=r"'train\.amp' is true but training runs on cpu"):
        train(_cfg(amp=True), split, tmp_path / "m.pt", progress=False)


def test_bfloat16_autocast_steps_train(split):
    # the mixed-precision code path, exercised on the CPU (where autocast supports bfloat16)
    from deepfm.data.batches import feature_tensors
    from deepfm.models import build_model
    from deepfm.training.objectives import Pointwise

    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params)
    optimizer = optim.make_optimizer(model, cfg.train)
    users = torch.from_numpy(split.train_users[:256].astype("int64"))
    items = torch.from_numpy(split.train_items[:256].astype("int64"))
    labels = torch.from_numpy(split.train_labels[:256].astype("float32"))
    history = torch.from_numpy(split.train_history[:256])
    batches = [(users, items, labels, history)] * 20
    bce = Pointwise(split, None, seed=0, negatives_per_positive=1, device="cpu")
    first = loop.train_steps(model, optimizer, batches[:1], bce, amp=True)
    last = loop.train_steps(model, optimizer, batches, bce, amp=True)
    assert math.isfinite(first) and last < first
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _record_linear_dtypes(model: torch.nn.Module, seen: list) -> None:
    """Record the output dtype of every Linear layer while the model is in training mode."""

    def hook(module, args, output):
        if module.training:
            seen.append(output.dtype)

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook)


@pytest.mark.parametrize("amp", [True, False])
def test_train_amp_runs_the_forward_pass_in_bfloat16(split, tmp_path, monkeypatch, amp):
    # autocast on the CPU supports bfloat16, so the switch itself is checked here: the dtype
    # of an intermediate under train(), not only the (float32) result
    monkeypatch.setattr(loop, "setup_torch", lambda tc, seed, *_: (1, torch.device("cpu")))
    seen: list = []
    real_build = loop.build_model

    def build_and_watch(*args, **kwargs):
        model = real_build(*args, **kwargs)
        _record_linear_dtypes(model, seen)
        return model

    monkeypatch.setattr(loop, "build_model", build_and_watch)
    train(_cfg(epochs=1, amp=amp), split, tmp_path / "m.pt", progress=False)
    assert seen and set(seen) == {torch.bfloat16 if amp else torch.float32}
    model, _ = load_model(tmp_path / "m.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_run_fingerprint_covers_params_and_every_training_array(split):
    import copy

    base = resume.run_fingerprint(_cfg(), split)
    assert base == resume.run_fingerprint(_cfg(), copy.deepcopy(split))
    assert base != resume.run_fingerprint(_cfg(learning_rate=0.01), split)
    arrays = ["train_users", "train_items", "train_labels", "train_history"]
    held = ["users", "items", "history"]
    features = ["user_features", "item_features", "item_genres"]
    assert sorted(split.features) == sorted(features)
    for name in arrays + [f"val.{h}" for h in held] + [f"features.{f}" for f in features]:
        changed = copy.deepcopy(split)
        if name.startswith("features."):
            array = changed.features[name[9:]]
        else:
            owner, attr = (changed.val, name[4:]) if name.startswith("val.") else (changed, name)
            array = getattr(owner, attr)
        array.flat[-1] = array.flat[-1] + 1
        assert resume.run_fingerprint(_cfg(), changed) != base, name


class SignalRecorder(Recorder):
    """Sends a real SIGINT (Ctrl-C) to this process while an epoch's row is logged: before
    that epoch's resume state is saved, the moment a raised KeyboardInterrupt would lose it."""

    def __init__(self, signal_after: int):
        super().__init__()
        self.signal_after = signal_after

    def next_step(self):
        super().next_step()
        if len(self.rows) == self.signal_after:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_after_the_epoch_is_saved_and_resumes_exactly(split, tmp_path):
    import signal

    # what the test process had (default_int_handler; SIG_IGN under nohup or `&`)
    before = signal.getsignal(signal.SIGINT)
    cfg = _cfg(epochs=4)
    clean = Recorder()
    train(cfg, split, tmp_path / "clean.pt", live=clean, progress=False)
    resume = tmp_path / "state.pt"
    interrupted = SignalRecorder(signal_after=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, tmp_path / "m.pt", live=interrupted, progress=False, resume_path=resume)
    assert len(interrupted.rows) == 2  # stopped before epoch 3 trained a single batch
    assert load_checkpoint(resume)["loop"]["epoch"] == 2  # the interrupted epoch was saved
    again = Recorder()
    train(cfg, split, tmp_path / "m.pt", live=again, progress=False, resume_path=resume)
    assert again.rows == clean.rows
    a, b = load_checkpoint(tmp_path / "clean.pt"), load_checkpoint(tmp_path / "m.pt")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # the handlers are put back: outside train(), Ctrl-C does what it did before
    assert signal.getsignal(signal.SIGINT) is before


def test_the_data_fingerprint_ignores_the_candidates_only(canonical):
    """Splits that differ only in their sampled candidates (another seed) share it; other rows
    (a seeded random tie-break among same-second ratings) or a flipped label do not."""
    from deepfm.data.splitting import split_dataset
    from deepfm.models.checkpoint import data_fingerprint
    from tests.conftest import ML_FIELDS

    interactions, users, items = canonical
    coarse = interactions.assign(timestamp=interactions["timestamp"] // 10**7)

    def fingerprint(seed, tie_break="item_id", frame=coarse):
        return data_fingerprint(split_dataset(
            frame, users, items, fields=ML_FIELDS, seed=seed, min_positives=3,
            num_negatives=30, history_length=4, tie_break=tie_break,
        ))  # fmt: skip

    assert fingerprint(7) == fingerprint(8)
    assert fingerprint(7, "random") != fingerprint(8, "random")
    flipped = coarse.assign(label=coarse.label.where(coarse.index != 0, 1 - coarse.label[0]))
    assert fingerprint(7, frame=flipped) != fingerprint(7)


def test_a_checkpoint_naming_a_removed_switch_says_to_retrain(split, tmp_path):
    from deepfm.io import save_checkpoint

    train(_cfg(epochs=1), split, tmp_path / "m.pt")
    payload = load_checkpoint(tmp_path / "m.pt")
    payload["model_params"] = {**payload["model_params"], "transition_items": 0}
    save_checkpoint(tmp_path / "old.pt", payload)
    with pytest.raises(
        ValueError,
        match=r"old\.pt: its deepfm params name transition_items, "
        r"which this version no longer has \(docs/tuning-log\.md\); retrain",
    ):
        load_model(tmp_path / "old.pt")


@pytest.mark.parametrize(
    ("monitor", "ks", "expected"),
    [
        (
            "full_ndcg",
            [5, 10, 20],
            r"'train\.monitor' is 'full_ndcg'; allowed: hr@5, ndcg@5, hr@10, ndcg@10, hr@20, "
            r"ndcg@20, mrr, auc, logloss, full_hr@5, full_ndcg@5, full_hr@10, full_ndcg@10, "
            r"full_hr@20, full_ndcg@20, full_mrr, gauc \(a @k metric's k must be in 'eval\.ks': "
            r"\[5, 10, 20\]\)\.$",
        ),
        ("full_auc", [5, 10, 20], r"'train\.monitor' is 'full_auc'; allowed: hr@5"),
        ("users", [5, 10, 20], r"'train\.monitor' is 'users'; allowed: hr@5"),
        (
            "ndcg@50",
            [5, 10, 20],
            r"'train\.monitor' is 'ndcg@50'; allowed: .*'eval\.ks': \[5, 10, 20\]",
        ),
        (  # the default monitor, full_ndcg@10, needs 10 in eval.ks
            "full_ndcg@10",
            [5, 20],
            r"'train\.monitor' is 'full_ndcg@10'; allowed: hr@5, ndcg@5, hr@20, ndcg@20, mrr, "
            r"auc, logloss, full_hr@5, .* 'eval\.ks': \[5, 20\]",
        ),
    ],
)
def test_a_monitor_that_validation_does_not_compute_is_refused(monitor, ks, expected):
    with pytest.raises(ConfigError, match=expected):
        check_monitor(monitor, ks)


def test_monitor_accepts_every_validation_metric_at_eval_ks():
    from deepfm.evaluation.metrics import keys

    for name in keys([7, 30]):
        check_monitor(name, [7, 30])
    cfg = parse_config({})
    assert cfg.train.monitor == "full_ndcg@10"
    check_monitor(cfg.train.monitor, cfg.eval.ks)


def test_a_bad_monitor_stops_train_before_any_work(split, tmp_path, monkeypatch):
    """`dvc exp run -S train.monitor=...` reruns the train stage first: it fails there at
    once, a ConfigError (the stage prints it and exits 2), before torch is even set up."""
    monkeypatch.setattr(loop, "setup_torch", lambda *a: pytest.fail("train started work"))
    with pytest.raises(ConfigError, match=r"'train\.monitor' is 'ndcg@50'; allowed: "):
        train(_cfg(monitor="ndcg@50"), split, tmp_path / "m.pt", progress=False)
