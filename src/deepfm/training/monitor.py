"""Which validation metric `train.monitor` may name: one that validation computes.

Checked by training, the layer that validates, rather than by config.py, which sits below
the metric registry (docs/architecture.md, "Layers"). No torch here.
"""

from __future__ import annotations

from deepfm.config import ConfigError
from deepfm.evaluation.metrics import keys, row_keys


def check_monitor(monitor: str, ks: list[int]) -> None:
    """Refuse a train.monitor that no validation computes: every metric at eval.ks (top-K)
    and the ctr protocol's row metrics. Whether it fits the dataset's protocol is the loop's
    check, once the split is known."""
    allowed = [*keys(ks), *(k for k in row_keys() if k not in keys([]))]
    if monitor not in allowed:
        raise ConfigError(
            f"params.yaml: 'train.monitor' is {monitor!r}; allowed: "
            f"{', '.join(allowed)} (a @k metric's k must be in 'eval.ks': {ks})."
        )
