"""Stage train: the split -> the model checkpoint (the last epoch, or the best by the
validation metric train.monitor: train.checkpoint).

Per-epoch curves go to --curves through dvclive (deterministic: tracked in dvc.lock);
wall-clock times go to --timing (a measurement, kept out of dvc.lock on purpose).

With train.processes > 1 this script starts itself again in that many processes under
torchrun (torch DDP, training.distributed) and waits for them; rank 0 writes the outputs.
"""

from pathlib import Path

from dvclive import Live

from deepfm.config import load_config
from deepfm.data.splitting import read_split
from deepfm.io import write_json
from deepfm.training import distributed
from deepfm.training.loop import train
from deepfm.training.monitor import check_monitor
from deepfm.utils import run_stage


def main(split: Path, model: Path, curves: Path, timing: Path) -> None:
    cfg = load_config()
    check_monitor(cfg.train.monitor, cfg.eval.ks)  # before torchrun starts a process per rank
    if cfg.train.processes > 1 and not distributed.under_torchrun():
        args = ["--split", split, "--model", model, "--curves", curves, "--timing", timing]
        distributed.launch(cfg.train, Path(__file__), [str(a) for a in args])
        return
    data = read_split(split)
    # Written after every epoch and removed at the end: an interrupted `dvc repro` resumes
    # from it. Beside the model (not a DVC output), so a rerun finds it.
    resume = model.parent / ".train_state.pt"
    if not distributed.is_main():  # another rank under torchrun: rank 0 writes every output
        train(cfg, data, model, resume_path=resume)
        return
    with (
        Live(str(curves), save_dvc_exp=False, dvcyaml=None) as live,
        Live(str(timing), save_dvc_exp=False, dvcyaml=None) as timing_live,
    ):
        outcome = train(cfg, data, model, live=live, timing_live=timing_live, resume_path=resume)
        seconds = outcome.seconds_per_epoch
        summary = {
            "model": cfg.model,
            "parameters": outcome.num_parameters,
            "epochs_run": outcome.epochs_run,
            "seconds_per_epoch": round(sum(seconds) / max(1, len(seconds)), 3),
            "threads": outcome.num_threads,  # per process
            "processes": cfg.train.processes,
            "device": outcome.device,
        }
    write_json(timing / "summary.json", summary)
    kept = outcome.kept_val
    print(
        f"train: {cfg.model}, kept epoch {outcome.kept_epoch} of {outcome.epochs_run} "
        f"(train.checkpoint: {cfg.train.checkpoint}; best validation epoch {outcome.best_epoch}; "
        f"{outcome.stop_reason}); val {cfg.train.monitor} {kept[cfg.train.monitor]:.4f} -> {model}"
    )


if __name__ == "__main__":
    run_stage(main, "split", "model", "curves", "timing")
