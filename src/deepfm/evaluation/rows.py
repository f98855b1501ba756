"""The ctr protocol's evaluation: every row of a split scored once, AUC and LogLoss over all
rows (the metrics of the DeepFM and xDeepFM papers), from the metric registry's functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepfm.data.rowsplit import Rows
from deepfm.evaluation.metrics import METRICS


@dataclass
class RowsResult:
    metrics: dict
    logits: np.ndarray  # (n,) float64, one per row, in the split's row order
    labels: np.ndarray  # (n,) 0/1


def evaluate_rows(
    model, rows: Rows, *, batch_size: int = 1 << 16, device: torch.device | str = "cpu"
) -> RowsResult:
    was_training = model.training
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(rows.labels), batch_size):
            block = np.array(rows.codes[start : start + batch_size])  # a copy off the map
            codes = torch.from_numpy(block).to(device)
            placeholder = torch.zeros(len(codes), dtype=torch.long, device=device)
            parts.append(model(placeholder, placeholder, codes).double().cpu())
    model.train(was_training)
    logits = torch.cat(parts).numpy() if parts else np.zeros(0)
    labels = rows.labels.astype(np.int64)
    metrics = {
        "auc": METRICS["auc"].fn(labels, logits),
        "logloss": METRICS["logloss"].fn(labels, logits),
        "rows": len(labels),
    }
    return RowsResult(metrics, logits, labels)
