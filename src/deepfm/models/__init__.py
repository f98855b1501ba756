"""The model registry, derived from one declaration: `MODEL_SECTIONS` in deepfm.config maps a
model's name (`model:` in params.yaml) to its params dataclass, and the model is the one
`RankingModel` subclass defined in `deepfm/models/<name>.py`. Adding a model is that file,
its params dataclass and its params.yaml section (README, "Add a model")."""

from __future__ import annotations

import importlib
import inspect

from torch import Tensor

from deepfm.config import MODEL_SECTIONS
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel


def _model_class(name: str) -> type[RankingModel]:
    module = importlib.import_module(f"deepfm.models.{name}")
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, RankingModel) and cls.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise TypeError(
            f"deepfm/models/{name}.py must define exactly one RankingModel subclass (the model "
            f"'{name}' of MODEL_SECTIONS); it defines {[c.__name__ for c in found] or 'none'}."
        )
    return found[0]


MODELS: dict[str, type[RankingModel]] = {name: _model_class(name) for name in MODEL_SECTIONS}


def build_model(name: str, schema: Schema, features: dict[str, Tensor], params) -> RankingModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}.")
    if not isinstance(params, MODEL_SECTIONS[name]):
        raise TypeError(f"model {name!r} takes {MODEL_SECTIONS[name].__name__} params.")
    return MODELS[name](
        schema.reading_history(getattr(params, "history_length", 0)), features, params
    )


__all__ = ["MODELS", "RankingModel", "build_model"]
