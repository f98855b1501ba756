"""ItemPop: the train-split popularity of an item, the same for every user. No training.

Popularity is the number of train users who rated the item (`count: ratings`, the usual
ItemPop) or who rated it positively (`count: positives`). The score is its smoothed
log-odds, logit((count + a) / (num_train_users + 2a)), so LogLoss is finite and AUC and
every ranking metric are exactly those of the popularity order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deepfm.config import ItemPopConfig
from deepfm.data.schema import Schema
from deepfm.data.splitting import SplitResult
from deepfm.models.base import RankingModel


class ItemPop(RankingModel):
    trainable = False

    def __init__(self, schema: Schema, features: dict, params: ItemPopConfig):
        super().__init__(schema, features)
        self.count = params.count
        self.smoothing = params.smoothing
        self.register_buffer("item_logits", torch.zeros(schema.num_items))

    def fit(self, split: SplitResult) -> None:
        items, labels = split.train_items, split.train_labels
        counted = items if self.count == "ratings" else items[labels == 1]
        counts = np.bincount(counted, minlength=self.schema.num_items)
        n = len(np.unique(split.train_users))
        a = self.smoothing
        p = (counts + a) / (n + 2 * a)
        self.item_logits.copy_(torch.from_numpy(np.log(p) - np.log1p(-p)).float())

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        return self.item_logits[items]

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """Popularity ignores the user and the history."""
        return self.item_logits[items][None, :].expand(len(users), -1).clone()
