"""The ctr protocol's evaluation: every row of a split scored once, AUC and LogLoss over all
rows (the metrics of the DeepFM and xDeepFM papers) and, where the dataset declares the rows'
groups (protocol.group: a user or device field), group AUC, from the metric registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepfm.data.rowsplit import Rows
from deepfm.evaluation.metrics import METRICS, row_keys


@dataclass
class RowsResult:
    metrics: dict
    logits: np.ndarray  # (n,) float64, one per row, in the split's row order
    labels: np.ndarray  # (n,) 0/1
    groups: np.ndarray | None = None  # (n,) uint64 group ids (0: none), if declared


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
    metrics = {}
    for name in row_keys(grouped=rows.groups is not None):
        metric = METRICS[name]
        if metric.grouped:  # rows of no group (a missing user) take no part
            kept = rows.groups != 0
            metrics[name] = metric.fn(labels[kept], logits[kept], rows.groups[kept])
        else:
            metrics[name] = metric.fn(labels, logits)
    metrics["rows"] = len(labels)
    return RowsResult(metrics, logits, labels, rows.groups)
