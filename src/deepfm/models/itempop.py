"""ItemPop: the train-split popularity of an item, the same for every user. No training.

Its score is the smoothed log-odds that a train user liked the item,
logit((positives(item) + a) / (num_train_users + 2a)), so LogLoss and AUC are meaningful
alongside the ranking metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from deepfm.config import ItemPopConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel


class ItemPop(RankingModel):
    trainable = False

    def __init__(self, schema: Schema, features: dict, params: ItemPopConfig):
        super().__init__(schema, features)
        self.smoothing = params.smoothing
        self.register_buffer("item_logits", torch.zeros(schema.num_items))

    def fit(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> None:
        positives = np.bincount(items[labels == 1], minlength=self.schema.num_items)
        n = len(np.unique(users))
        a = self.smoothing
        p = (positives + a) / (n + 2 * a)
        self.item_logits.copy_(torch.from_numpy(np.log(p) - np.log1p(-p)).float())

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.item_logits[items]

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 0):
        return self.item_logits[items][None, :].expand(len(users), -1).clone()
