"""The model registry: `model:` in params.yaml -> class. Each model has a params section of
the same name in params.yaml (its dataclass is registered in deepfm.config.MODEL_SECTIONS)."""

from __future__ import annotations

import torch

from deepfm.config import MODEL_SECTIONS
from deepfm.data.schema import Schema
from deepfm.models.attention_deepfm import AttentionDeepFM
from deepfm.models.base import RankingModel
from deepfm.models.deepfm import DeepFM
from deepfm.models.ease import EASE
from deepfm.models.fm import FM
from deepfm.models.item_cooccurrence import ItemCooccurrence
from deepfm.models.itempop import ItemPop
from deepfm.models.lr import LR
from deepfm.models.sasrec import SASRec
from deepfm.models.xdeepfm import XDeepFM

MODELS: dict[str, type[RankingModel]] = {
    "attention_deepfm": AttentionDeepFM,
    "deepfm": DeepFM,
    "ease": EASE,
    "fm": FM,
    "item_cooccurrence": ItemCooccurrence,
    "itempop": ItemPop,
    "lr": LR,
    "sasrec": SASRec,
    "xdeepfm": XDeepFM,
}


def build_model(
    name: str, schema: Schema, features: dict[str, torch.Tensor], params
) -> RankingModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}.")
    if not isinstance(params, MODEL_SECTIONS[name]):
        raise TypeError(f"model {name!r} takes {MODEL_SECTIONS[name].__name__} params.")
    return MODELS[name](schema, features, params)


__all__ = ["MODELS", "RankingModel", "build_model"]
