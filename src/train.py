"""Stage train: data/split/ -> models/model.pt (the last epoch, or the best by validation
full-ranking NDCG@10: train.checkpoint).

Per-epoch curves go to metrics/train/ through dvclive (deterministic: tracked in dvc.lock);
wall-clock times go to metrics/timing/ (a measurement, kept out of dvc.lock on purpose).
"""

from pathlib import Path

from dvclive import Live

from deepfm.config import load_config
from deepfm.data.split import read_split
from deepfm.io import write_json
from deepfm.training.loop import train
from deepfm.utils import run_stage

SPLIT, MODEL = Path("data/split"), Path("models/model.pt")
# Written after every epoch and removed at the end: an interrupted `dvc repro` resumes from it.
RESUME = Path("models/.train_state.pt")
LIVE_DIR, TIMING_DIR = "metrics/train", "metrics/timing"


def main() -> None:
    cfg = load_config()
    split = read_split(SPLIT)
    with (
        Live(LIVE_DIR, save_dvc_exp=False, dvcyaml=None) as live,
        Live(TIMING_DIR, save_dvc_exp=False, dvcyaml=None) as timing,
    ):
        outcome = train(cfg, split, MODEL, live=live, timing_live=timing, resume_path=RESUME)
        summary = {
            "model": cfg.model,
            "parameters": outcome.num_parameters,
            "epochs_run": outcome.epochs_run,
            "seconds_per_epoch": round(
                sum(outcome.seconds_per_epoch) / max(1, len(outcome.seconds_per_epoch)), 3
            ),
            "threads": outcome.num_threads,
            "device": outcome.device,
        }
    write_json(Path(TIMING_DIR) / "summary.json", summary)
    kept = outcome.kept_val
    print(
        f"train: {cfg.model}, kept epoch {outcome.kept_epoch} of {outcome.epochs_run} "
        f"(train.checkpoint: {cfg.train.checkpoint}; best validation epoch {outcome.best_epoch}; "
        f"{outcome.stop_reason}); val full_ndcg@10 {kept['full_ndcg@10']:.4f}, "
        f"hr@10 {kept['hr@10']:.4f} -> {MODEL}"
    )


if __name__ == "__main__":
    run_stage(main)
