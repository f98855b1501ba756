"""FeatureEmbedding: every field of the schema -> one vector per field.

Sparse fields share one table with per-field offsets (one gather for all of them);
sequence fields (genres) are mean-pooled bags in which padding code 0 is left out of the
mean. Lookups are split by side (user / item) so a model can embed U users and I items once
and combine them into a U x I score matrix without materialising U*I rows of features.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.data.schema import Schema


class FeatureEmbedding(nn.Module):
    def __init__(self, schema: Schema, dim: int, init_std: float = 1e-2):
        super().__init__()
        self.dim = dim
        self.sides: dict[str, dict] = {}
        self.tables = nn.ModuleDict()
        self.bags = nn.ModuleDict()
        for side in ("user", "item"):
            sparse = schema.by_source(side, "sparse")
            offsets = torch.tensor([0] + [f.vocab_size for f in sparse], dtype=torch.long)
            self.register_buffer(f"{side}_offsets", offsets.cumsum(0)[:-1], persistent=False)
            self.tables[side] = nn.Embedding(int(offsets.sum()), dim)
            for f in schema.by_source(side, "sequence"):
                self.bags[f.name] = nn.EmbeddingBag(f.vocab_size, dim, mode="mean", padding_idx=0)
            self.sides[side] = {
                "sparse_columns": [f.column for f in sparse],
                "sequence": [(f.name, f.column) for f in schema.by_source(side, "sequence")],
            }
        self.num_user_fields = len(schema.by_source("user", "sparse")) + len(
            schema.by_source("user", "sequence")
        )
        self.num_item_fields = len(schema.by_source("item", "sparse")) + len(
            schema.by_source("item", "sequence")
        )
        self.num_fields = self.num_user_fields + self.num_item_fields
        for module in [*self.tables.values(), *self.bags.values()]:
            nn.init.normal_(module.weight, std=init_std)
            if isinstance(module, nn.EmbeddingBag):
                with torch.no_grad():
                    module.weight[0].zero_()

    def side(self, side: str, codes: torch.Tensor, bags: list[torch.Tensor]) -> torch.Tensor:
        """codes: (N, n_sparse) field codes of one side; bags: one (N, L) code matrix per
        sequence field. Returns (N, n_fields_of_side, dim)."""
        offsets = getattr(self, f"{side}_offsets")
        parts = [self.tables[side](codes + offsets)]
        for (name, _), bag in zip(self.sides[side]["sequence"], bags, strict=True):
            parts.append(self.bags[name](bag).unsqueeze(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
