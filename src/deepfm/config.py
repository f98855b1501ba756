"""params.yaml -> frozen, validated dataclasses.

Validation is strict on purpose: an unknown key (a typo in params.yaml or in a
`dvc exp run -S` override), a wrong type or an out-of-range value is one ConfigError that
names the key, the bad value and what is allowed. Nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from deepfm.data.declaration import DatasetSpec


class ConfigError(ValueError):
    """A params.yaml problem; the message names the key, the value and what is allowed."""


def _range(lo=None, hi=None, *, lo_open=False):
    return {"min": lo, "max": hi, "lo_open": lo_open}


@dataclass(frozen=True)
class SplitConfig:
    min_positives: int = field(default=3, metadata=_range(3))
    # the history field: the user's most recent positives before each example; 0 = no field
    history_length: int = field(default=10, metadata=_range(0, 1000))
    # a user's sequence (the history field, every sequence-aware model's input): train
    # positives, or every train rating (observed negatives too)
    sequence: Literal["positives", "rated"] = "rated"
    # order of one user's ratings within the same second: ascending item_id, or seeded random
    tie_break: Literal["item_id", "random"] = "item_id"
    # what trains (docs/protocol.md): causal, each evaluated user's ratings before their
    # validation item; none, every rating but the held-out ones (the older reading)
    cut: Literal["causal", "none"] = "causal"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=20, metadata=_range(1, 10_000))
    # no early stop before this epoch; above `epochs` it simply never stops early
    min_epochs: int = field(default=20, metadata=_range(1, 10_000))
    patience: int = field(default=10, metadata=_range(1, 10_000))
    # validate every n epochs, and always after the last: with checkpoint `last` validation
    # only draws the curves, and for xDeepFM / AttentionDeepFM it costs as much as training
    val_every: int = field(default=5, metadata=_range(1, 10_000))
    # which weights go to models/model.pt: the best validation epoch, or the last epoch run
    # (with a schedule that anneals to 0, the last epoch beat noisy best-epoch picks)
    checkpoint: Literal["best", "last"] = "last"
    # the validation metric that early stopping, the plateau scheduler and checkpoint `best`
    # watch, in its direction (deepfm.evaluation.metrics); a @k metric's k must be in eval.ks
    monitor: str = "full_ndcg@10"
    batch_size: int = field(default=2048, metadata=_range(1, 1 << 20))
    learning_rate: float = field(default=2e-3, metadata=_range(0.0, 10.0, lo_open=True))
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))
    embedding_l2: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # row-sparse embedding gradients and a lazy Adam that updates only the rows a batch used
    # (training.optim.LazyAdam): a step's cost stops growing with the vocabulary (click
    # logs). Untouched rows keep their moments, so the numbers differ from dense Adam's.
    sparse_embeddings: bool = False
    grad_clip: float = field(default=0.0, metadata=_range(0.0))
    # learning-rate schedule: plateau halves-by-factor on a stalled validation monitor,
    # cosine anneals to 0 over `epochs`
    scheduler: Literal["none", "plateau", "cosine"] = "cosine"
    plateau_factor: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    plateau_patience: int = field(default=2, metadata=_range(0, 10_000))
    # training negatives per target, uniform over the user's unrated items
    negatives_per_positive: int = field(default=4, metadata=_range(0, 1000))
    # label-1 training rows: the positives, or every rated row (implicit feedback: "what the
    # user rates next"); evaluation always holds out positives (docs/protocol.md)
    targets: Literal["positives", "rated"] = "rated"
    # torch threads per training process; 0 = the physical cores / processes
    num_threads: int = field(default=2, metadata=_range(0, 1024))
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: cuda > mps > cpu
    # training processes on this machine (torch DDP under torchrun, which the train stage
    # launches itself; training.distributed); 1 = one plain process
    processes: int = field(default=1, metadata=_range(1, 1024))
    amp: bool = False  # bfloat16 autocast of the forward pass; CUDA only
    # large batches: learning_rate x (batch_size / lr_reference_batch) under `linear` (Goyal et
    # al. 2017, for SGD), x its square root under `sqrt` (for Adam: Malladi et al. 2022);
    # batch_size is the global batch (all processes together)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_reference_batch: int = field(default=2048, metadata=_range(1, 1 << 20))
    # the first n epochs ramp the learning rate up linearly (epoch e runs at (e / (n + 1)) of
    # it), then train.scheduler runs over the remaining epochs; 0 = no warm-up
    warmup_epochs: int = field(default=0, metadata=_range(0, 10_000))
    # build each epoch on the training device: the train arrays go there once, and the
    # negatives are drawn there by torch's generator (another stream than the host's numpy
    # draw, so other numbers); on a GPU no epoch waits on the host
    device_epochs: bool = False
    # torch.compile the model for the training steps: none, or a torch.compile mode
    # (reduce-overhead adds CUDA graphs on a GPU); benchmarks/throughput.py measures it
    compile_mode: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"

    def __post_init__(self):
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"params.yaml: 'train.warmup_epochs' is {self.warmup_epochs} but 'train.epochs' "
                f"is {self.epochs}: the warm-up must leave epochs to train at the full rate. "
                "Lower train.warmup_epochs or raise train.epochs."
            )
        if self.compile_mode != "none" and self.processes > 1:
            raise ConfigError(
                f"params.yaml: 'train.compile_mode' is {self.compile_mode!r} with "
                f"'train.processes' {self.processes}: a compiled model under DDP is not "
                "supported here. Set train.compile_mode: none, or train.processes: 1."
            )
        if self.warmup_epochs and self.scheduler == "plateau":
            raise ConfigError(
                "params.yaml: 'train.warmup_epochs' needs train.scheduler cosine or none (the "
                "plateau schedule reacts to validation, not to epochs): set one of them back."
            )


@dataclass(frozen=True)
class EvalConfig:
    num_negatives: int = field(default=999, metadata=_range(1, 100_000))
    ks: list[int] = field(default_factory=lambda: [5, 10, 20], metadata=_range(1, 100_000))
    batch_users: int = field(default=32, metadata=_range(1, 1 << 20))
    # 0: every evaluation user; n > 0: n of them drawn from `seed`, the same users for
    # validation (in training too) and test: for catalogues too large to rank for everyone
    sample_users: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class ReadsHistory:
    """A model that reads the history field, and how much of it."""

    # the n most recent of the split's history items the model reads (a per-model choice; the
    # split stores split.history_length of them); 0 = all of them
    history_length: int = field(default=0, metadata=_range(0, 1000))


@dataclass(frozen=True)
class OrderAware(ReadsHistory):
    """What the DeepFM family reads of the history's order, and how it is trained
    (recent_items 0, history_pooling mean and loss bce: the models without either)."""

    # the n most recent history items as user-side fields of their own (FPMC-style)
    recent_items: int = field(default=3, metadata=_range(0, 1000))
    # pool the history bag with equal weights, with a learned weight per position, or take
    # the most recent position's output of a causal self-attention encoder over it (BST)
    history_pooling: Literal["mean", "position", "transformer"] = "position"
    # with history_pooling transformer: its blocks (SASRec's, one head, the model's dropout)
    history_layers: int = field(default=1, metadata=_range(1, 16))
    # pointwise BCE over positives and sampled negatives (bce_grouped: the same, each batch
    # holding whole groups of a target and its own negatives, so the user side and its
    # history encoder run once per target)
    loss: Literal["bce", "bce_grouped"] = "bce"
    # an embedding size per field (e.g. {gender: 2, item_id: 64}), projected to embed_dim
    # where FM / CIN need one width; fields not named use embed_dim
    field_dims: dict[str, int] = field(default_factory=dict, metadata=_range(1, 1024))


@dataclass(frozen=True)
class DeepFMConfig(OrderAware):
    embed_dim: int = field(default=64, metadata=_range(1, 1024))
    dnn_hidden: list[int] = field(default_factory=lambda: [128, 64], metadata=_range(1, 65536))
    dropout: float = field(default=0.2, metadata=_range(0.0, 0.99))
    batch_norm: bool = True
    # w > 0, with loss bce_grouped: + w x a softmax cross-entropy over the whole catalogue of
    # the logit's factorised part (first-order + FM: SASRec's objective on the dot product of
    # the user side, history included, with each item's side); 0 = off
    catalogue_weight: float = field(default=0.0, metadata=_range(0.0, 100.0))


@dataclass(frozen=True)
class ItemPopConfig:
    # popularity = number of train ratings of the item (the usual ItemPop), or of its positives
    count: Literal["ratings", "positives"] = "positives"
    smoothing: float = field(default=1.0, metadata=_range(0.0, lo_open=True))


@dataclass(frozen=True)
class ItemCooccurrenceConfig:
    """Item-to-item co-occurrence counts over the users' train sequences, scored against the
    history field (deepfm.models.item_cooccurrence). No training."""

    # pairs (a -> b) with b at most this many sequence positions after a
    window: int = field(default=10, metadata=_range(1, 10_000))
    # forward: a -> b only (what follows a); both: also b -> a
    direction: Literal["forward", "both"] = "both"
    normalise: Literal["row", "none"] = "row"  # row: each item's row of counts sums to 1
    # history position p (0 = most recent) weighs 1 / (p + 1) ** recency_power
    recency_power: float = field(default=1.0, metadata=_range(0.0, 100.0))
    recent: int = field(default=0, metadata=_range(0, 10_000))  # first n positions; 0 = all
    # + this times the item's train popularity / the largest (ties, empty histories)
    popularity_weight: float = field(default=1e-6, metadata=_range(0.0, 1e6))


@dataclass(frozen=True)
class EASEConfig:
    """Steck's EASE (WWW 2019): a closed-form item-item linear autoencoder
    (deepfm.models.ease). No training."""

    l2: float = field(default=100.0, metadata=_range(0.0, 1e12, lo_open=True))  # lambda
    # the user x item input matrix: every train rating, or the train positives only
    input: Literal["rated", "positives"] = "positives"


@dataclass(frozen=True)
class LRConfig(ReadsHistory):
    """Logistic regression on the one-hot fields: only how much of the history it reads."""


@dataclass(frozen=True)
class FMConfig(ReadsHistory):
    embed_dim: int = field(default=64, metadata=_range(1, 1024))
    # an embedding size per field, projected to embed_dim (see OrderAware.field_dims)
    field_dims: dict[str, int] = field(default_factory=dict, metadata=_range(1, 1024))


@dataclass(frozen=True)
class XDeepFMConfig(OrderAware):
    embed_dim: int = field(default=16, metadata=_range(1, 1024))
    cin_layers: list[int] = field(default_factory=lambda: [32, 32], metadata=_range(1, 4096))
    cin_split_half: bool = True
    dnn_hidden: list[int] = field(default_factory=lambda: [128, 64], metadata=_range(1, 65536))
    dropout: float = field(default=0.2, metadata=_range(0.0, 0.99))
    batch_norm: bool = True

    def __post_init__(self):
        # checked here, not only in the CIN layer, so a bad `-S` override fails at load time
        if self.cin_split_half and any(h % 2 for h in self.cin_layers[:-1]):
            raise ConfigError(
                f"params.yaml: 'xdeepfm.cin_layers' is {list(self.cin_layers)!r}; with "
                "'xdeepfm.cin_split_half: true' every size but the last must be even."
            )


@dataclass(frozen=True)
class AttentionDeepFMConfig(OrderAware):
    embed_dim: int = field(default=16, metadata=_range(1, 1024))
    attention_layers: int = field(default=1, metadata=_range(0, 64))  # 0 = DeepFM
    attention_heads: int = field(default=2, metadata=_range(1, 64))
    attention_dim: int = field(default=32, metadata=_range(1, 1024))  # per head
    # pool the history by attention from the candidate item (DIN, Zhou et al., KDD 2018)
    target_attention: bool = True
    dnn_hidden: list[int] = field(default_factory=lambda: [128, 64], metadata=_range(1, 65536))
    dropout: float = field(default=0.2, metadata=_range(0.0, 0.99))
    batch_norm: bool = True


@dataclass(frozen=True)
class SASRecConfig(ReadsHistory):
    """SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over the history field (user
    features unused); logit(u, i) = state(history) . E[item_id(i)] with E the input table."""

    embed_dim: int = field(default=64, metadata=_range(1, 1024))
    num_layers: int = field(default=2, metadata=_range(0, 64))  # self-attention blocks
    num_heads: int = field(default=1, metadata=_range(1, 64))  # must divide embed_dim
    dropout: float = field(default=0.2, metadata=_range(0.0, 0.99))
    # positional embeddings; a longer history keeps its max_len most recent items
    max_len: int = field(default=200, metadata=_range(1, 10_000))
    item_bias: bool = False  # add a learned per-item bias to h . E[item] (not in the paper)
    # the training objective (read by the training loop, not the model): "softmax" = full
    # cross-entropy over the whole catalogue (catalogue_logits, target = the next item);
    # "bce" = the paper's binary cross-entropy on the positive and one sampled negative
    loss: Literal["softmax", "bce"] = "softmax"

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"params.yaml: 'sasrec.num_heads' is {self.num_heads}; it must divide "
                f"'sasrec.embed_dim' ({self.embed_dim})."
            )


# One params section per model; the registry in deepfm.models maps the same names to classes.
MODEL_SECTIONS: dict[str, type] = {
    "attention_deepfm": AttentionDeepFMConfig,
    "deepfm": DeepFMConfig,
    "ease": EASEConfig,
    "fm": FMConfig,
    "item_cooccurrence": ItemCooccurrenceConfig,
    "itempop": ItemPopConfig,
    "lr": LRConfig,
    "sasrec": SASRecConfig,
    "xdeepfm": XDeepFMConfig,
}


@dataclass(frozen=True)
class Config:
    seed: int = field(default=42, metadata=_range(0, 2**32 - 1))
    dataset: str = "ml-100k"
    model: str = "deepfm"
    # every declared dataset (params.yaml `datasets:`), by name; `dataset` picks one
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset_spec(self) -> DatasetSpec:
        """The declaration of the selected dataset."""
        return self.datasets[self.dataset]

    @property
    def model_params(self):
        """The params section of the selected model."""
        return self.models[self.model]

    def to_dict(self) -> dict:
        """Every param as plain data, each model's section under its name (as in params.yaml)."""
        out = dataclasses.asdict(self)
        out.update(out.pop("models"))
        return out


def _describe_type(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_describe_type(typing.get_args(tp)[1])}"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, str(tp))


def _check_scalar(key: str, value, tp, meta) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"params.yaml: '{key}' is {value!r}; allowed: {', '.join(map(repr, allowed))}."
            )
        return value
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(
            f"params.yaml: '{key}' is {value!r} ({type(value).__name__}); "
            f"it must be {_describe_type(tp)}."
        )
    if tp is float:
        value = float(value)
    lo, hi = meta.get("min"), meta.get("max")
    if tp in (int, float) and (
        (lo is not None and (value < lo or (meta.get("lo_open") and value == lo)))
        or (hi is not None and value > hi)
    ):
        lo_txt = "" if lo is None else (f"> {lo}" if meta.get("lo_open") else f">= {lo}")
        hi_txt = "" if hi is None else f"<= {hi}"
        allowed = " and ".join(t for t in (lo_txt, hi_txt) if t)
        raise ConfigError(f"params.yaml: '{key}' is {value!r}; it must be {allowed}.")
    return value


def _check_value(key: str, value, tp, meta) -> Any:
    if typing.get_origin(tp) is dict:
        _, elem = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(
                f"params.yaml: '{key}' is {value!r}; it must be {_describe_type(tp)}."
            )
        return {str(k): _check_scalar(f"{key}.{k}", v, elem, meta) for k, v in value.items()}
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp)
        if not isinstance(value, list) or not value:
            raise ConfigError(
                f"params.yaml: '{key}' is {value!r}; it must be a non-empty {_describe_type(tp)}."
            )
        return [_check_scalar(f"{key}[{i}]", v, elem, meta) for i, v in enumerate(value)]
    return _check_scalar(key, value, tp, meta)


def _unknown_key_error(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    allowed = f"Allowed here: {', '.join(sorted(known))}." if known else "This section takes none."
    return ConfigError(f"params.yaml: unknown key '{key}'.{hint} {allowed}")


def _missing_key_error(key: str, default) -> ConfigError:
    return ConfigError(
        f"params.yaml: missing key '{key}'. Every knob must be explicit so DVC tracks it: "
        f"add '{key.rsplit('.', 1)[-1]}: {default!r}' (the documented default) to its section."
    )


def _values(cls, raw: dict, prefix: str, require_all: bool, names=None) -> dict:
    """raw's values of the fields `names` of dataclass cls, each checked (a missing one is an
    error with require_all); names None: every field, and raw may hold no other key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw if names is None else ():
        if key not in fields:
            raise _unknown_key_error(f"{prefix}{key}", list(fields))
    values = {}
    for name in fields if names is None else names:
        f = fields[name]
        if name in raw:
            values[name] = _check_value(f"{prefix}{name}", raw[name], hints[name], f.metadata)
        elif require_all:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            raise _missing_key_error(f"{prefix}{name}", default)
    return values


def _build(cls, raw, prefix: str, require_all: bool = False):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: '{prefix}' must be a mapping of keys, got {raw!r}.")
    return cls(**_values(cls, raw, f"{prefix}.", require_all))


def _own_train(model: str, block) -> dict:
    """The train keys a model's section names (`<model>.train`), each checked as `train`'s."""
    own = block.get("train") if isinstance(block, dict) else None
    if own is None:
        return {}
    if not isinstance(own, dict):
        raise ConfigError(
            f"params.yaml: '{model}.train' must map train keys to this model's values, e.g. "
            f"'{model}: {{train: {{epochs: 40}}}}'; got {own!r}."
        )
    _values(TrainConfig, own, f"{model}.train.", require_all=False)
    return own


def _sections(raw: dict, sections: dict, chosen: str, require_all: bool) -> dict:
    """The split / train / eval sections and every model's ({"models": {name: section}}). A
    model's section may name train keys of its own (`sasrec: {train: {epochs: 40}}`): they
    replace the shared `train` keys when that model is the chosen one."""
    own_train = {name: _own_train(name, raw.get(name)) for name in MODEL_SECTIONS}
    out: dict[str, Any] = {"models": {}}
    for name, cls in {**sections, **MODEL_SECTIONS}.items():
        if require_all and name not in raw:
            raise ConfigError(f"params.yaml: missing section '{name}'; add it with its keys.")
        block = raw.get(name)
        if name in MODEL_SECTIONS and isinstance(block, dict):
            block = {k: v for k, v in block.items() if k != "train"}
        if name == "train" and isinstance(block, dict):
            block = {**block, **own_train.get(chosen, {})}
        section = _build(cls, block, name, require_all)
        if name in sections:
            out[name] = section
        else:
            out["models"][name] = section
    return out


def parse_config(raw: dict, *, require_all: bool = False) -> Config:
    """Validate a params mapping (as loaded from YAML) and return the typed Config.

    require_all: every key must be present (how the pipeline loads params.yaml, so that no
    default hidden in code can change a result without DVC seeing it).
    """
    # late imports (none imports anything from here); no torch
    from deepfm.data.declaration import FILE_SOURCES, DeclarationError, parse_dataset
    from deepfm.data.sources import DATASETS

    if not isinstance(raw, dict):
        raise ConfigError("params.yaml must be a mapping of sections, e.g. 'train: {epochs: 30}'.")
    sections = {"split": SplitConfig, "train": TrainConfig, "eval": EvalConfig}
    top = {"seed", "dataset", "model"}
    known = sorted(top | {"datasets"} | set(sections) | set(MODEL_SECTIONS))
    for key in raw:
        if key not in known:
            raise _unknown_key_error(str(key), known)

    values = _values(Config, raw, "", require_all, names=sorted(top))
    values.update(_sections(raw, sections, values.get("model", Config.model), require_all))
    declared = raw.get("datasets")
    if require_all and not declared:
        raise ConfigError(
            "params.yaml: missing section 'datasets'; declare each dataset there (README, "
            "'Add a dataset')."
        )
    if declared is not None and not isinstance(declared, dict):
        raise ConfigError(
            f"params.yaml: 'datasets' must map names to declarations, got {declared!r}."
        )
    registered = tuple(sorted({*DATASETS, *FILE_SOURCES} - {"local"}))
    try:
        values["datasets"] = {
            str(name): parse_dataset(str(name), block, registered)
            for name, block in (declared or {}).items()
        }
    except DeclarationError as e:
        raise ConfigError(str(e)) from None
    cfg = Config(**values)

    if declared is not None and cfg.dataset not in cfg.datasets:
        raise ConfigError(
            f"params.yaml: 'dataset' is {cfg.dataset!r}; declared under 'datasets': "
            f"{', '.join(cfg.datasets) or 'none'}."
        )
    if cfg.model not in MODEL_SECTIONS:
        raise ConfigError(
            f"params.yaml: 'model' is {cfg.model!r}; allowed: {', '.join(sorted(MODEL_SECTIONS))}."
        )
    reads = getattr(cfg.model_params, "history_length", 0)
    if reads > cfg.split.history_length:
        raise ConfigError(
            f"params.yaml: '{cfg.model}.history_length' is {reads} but the split holds "
            f"'split.history_length' {cfg.split.history_length} items: raise "
            f"split.history_length to at least {reads}, or lower {cfg.model}.history_length."
        )
    if cfg.train.sparse_embeddings and cfg.train.optimizer != "adam":
        raise ConfigError(
            f"params.yaml: 'train.sparse_embeddings' is true with 'train.optimizer' "
            f"{cfg.train.optimizer!r}; sparse embedding updates use a lazy Adam: set "
            "train.optimizer to adam, or train.sparse_embeddings to false."
        )
    # train.monitor names a validation metric: training checks which (training.monitor),
    # since the metric registry sits above config in the layers (docs/architecture.md)
    return cfg


def load_config(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Config:
    """params.yaml, checked; `overrides` are `dvc exp run -S`-style assignments applied first
    ("train.batch_size=65536", values read as YAML), so they are checked the same way."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run the stage from the repository root.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not KEY=VALUE, e.g. train.batch_size=4096.")
        *parents, leaf = key.split(".")
        section = raw
        for name in parents:
            section = section.setdefault(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"override {item!r}: {name!r} is not a section of {path}.")
        section[leaf] = yaml.safe_load(value)
    return parse_config(raw, require_all=True)
