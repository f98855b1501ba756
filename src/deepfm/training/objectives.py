"""What a training step minimises, and the batches it reads each epoch.

An objective draws one epoch's batches (fresh negatives every epoch, seeded by seed and
epoch; one shuffle from the loop's generator) and turns a batch into a loss. With a `shard`
(multi-process training, training.distributed) every rank draws the same epoch and yields
only its part of each batch. The loop in loop.py is the same for all of them, so checkpoints,
resume and the non-finite-loss guard hold for every model.

- `Pointwise`: BCE over the training targets (label 1: train positives, or every train
  rating with `train.targets: rated`) and `negatives_per_positive` sampled negatives each
  (label 0).
- `GroupedPointwise`: Pointwise's BCE (labels 1, 0, ..., 0), each batch holding whole
  groups of a target and its own negatives, so a model that embeds the user side once per
  group (`group_logits`) runs its history encoder once per target, not once per pair.
  DeepFM's `catalogue_weight` w adds w x a softmax over the whole catalogue of the logit's
  factorised part (first-order + FM), NextItemSoftmax's objective on that part.
- `GivenLabels`: BCE over the rows of the ctr protocol, each with its given 0/1 label (no
  sampling; users and items are the placeholder 0, the row's fields its context codes).
- `NextItemSoftmax`: a full softmax over the catalogue for each train positive, given its
  history: the next-item objective of sequence models (SASRec); the model needs
  `catalogue_logits(users, history)`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from deepfm.data.batches import (
    DeviceEpochs,
    epoch_examples,
    iterate_batches,
    target_rows,
    with_history,
)
from deepfm.data.sampling import RatedIndex, sample_negatives
from deepfm.data.splitting import CTRSplit, SplitResult
from deepfm.utils import rng_for


class TrainingError(RuntimeError):
    """Training cannot start or go on (a params combination that cannot train, a non-finite
    loss); the best checkpoint is left untouched."""


class Pointwise:
    def __init__(
        self, split, rated, *, seed, negatives_per_positive, device, targets="positives",
        device_epochs=False,
    ):  # fmt: skip
        self.split, self.rated, self.seed, self.device = split, rated, seed, device
        self.negatives = negatives_per_positive
        self.targets = targets
        self.history = _history(split, device)
        self.on_device = None
        if device_epochs:
            self.on_device = DeviceEpochs(
                split, rated, seed=seed, negatives_per_positive=negatives_per_positive,
                targets=targets, device=device,
            )  # fmt: skip

    def batches(
        self, epoch: int, batch_size: int, shuffle: torch.Generator, shard=None
    ) -> Iterator:
        if self.on_device is not None:
            tensors = self.on_device.examples(epoch)
        else:
            arrays = epoch_examples(
                self.split, self.rated, seed=self.seed, epoch=epoch,
                negatives_per_positive=self.negatives, targets=self.targets,
            )  # fmt: skip
            tensors = tuple(torch.from_numpy(a).to(self.device) for a in arrays)
        return with_history(iterate_batches(tensors, batch_size, shuffle, shard), self.history)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        users, items, labels, history = batch
        logits = model(users, items, history).float()
        return F.binary_cross_entropy_with_logits(logits, labels), len(labels)


class GroupedPointwise(Pointwise):
    """A batch holds whole groups: (B,) users and (B, 1 + n) items, the target first, with
    Pointwise's negatives (one epoch draws the same items for both). train.batch_size still
    counts pairs (a step takes batch_size // (1 + n) groups), so an epoch takes about as many
    steps as Pointwise's. catalogue_weight: `group_and_catalogue_logits`' softmax term."""

    def __init__(self, split, rated, *, catalogue_weight=0.0, **sampled):
        """sampled: Pointwise's keyword arguments."""
        if sampled["negatives_per_positive"] < 1:
            raise TrainingError(
                "loss bce_grouped needs train.negatives_per_positive >= 1 (the negatives "
                "grouped with each target)."
            )
        super().__init__(split, rated, **sampled)
        self.catalogue_weight = catalogue_weight

    def batches(
        self, epoch: int, batch_size: int, shuffle: torch.Generator, shard=None
    ) -> Iterator:
        groups = max(1, batch_size // (1 + self.negatives))
        if self.on_device is not None:
            d = self.on_device
            _, neg = d.negatives(epoch)
            items = torch.cat([d.items[:, None], neg.reshape(len(d.rows), -1)], 1)
            tensors = (d.users, items, d.rows)
        else:
            rows = target_rows(self.split, self.targets)
            users = self.split.train_users[rows].astype(np.int64)
            # the same stream as Pointwise's negatives: one epoch draws the same items for both
            _, neg = sample_negatives(
                users, self.negatives, self.rated, rng_for(self.seed, "train-negatives", epoch)
            )
            items = np.concatenate(
                [self.split.train_items[rows, None].astype(np.int64), neg.reshape(len(rows), -1)], 1
            )
            tensors = tuple(torch.from_numpy(a).to(self.device) for a in (users, items, rows))
        for u, i, r in iterate_batches(tensors, groups, shuffle, shard):
            yield u, i, None if self.history is None else self.history[r]

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        users, items, history = batch  # items: (B, 1 + n), the target first
        if self.catalogue_weight:
            logits, catalogue = model.group_and_catalogue_logits(users, items, history)
        else:
            logits = model.group_logits(users, items, history)
        logits = logits.float()
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if self.catalogue_weight:
            # per target, as NextItemSoftmax (SASRec): the other rated items stay in it
            next_item = F.cross_entropy(catalogue.float(), items[:, 0])
            loss = loss + self.catalogue_weight * next_item
        return loss, logits.numel()


class NextItemSoftmax:
    def __init__(self, split, rated, *, device, targets="positives"):
        if split.schema.field("history") is None:
            raise TrainingError(
                "a next-item softmax needs the history field: set split.history_length > 0."
            )
        self.split, self.device, self.targets = split, device, targets
        self.history = _history(split, device)
        # no negatives to draw: the epoch's arrays stay on the device across epochs
        self.tensors = _target_tensors(split, targets, device)

    def batches(
        self, epoch: int, batch_size: int, shuffle: torch.Generator, shard=None
    ) -> Iterator:
        for u, i, r in iterate_batches(self.tensors, batch_size, shuffle, shard):
            yield u, i, self.history[r]

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        users, targets, history = batch
        logits = model.catalogue_logits(users, history).float()
        return F.cross_entropy(logits, targets), len(targets)


def _target_tensors(split: SplitResult, targets: str, device) -> tuple[torch.Tensor, ...]:
    """(users, items, train rows) of the training targets, int64 on `device`."""
    rows = target_rows(split, targets)
    arrays = (split.train_users[rows], split.train_items[rows], rows)
    return tuple(torch.from_numpy(a.astype(np.int64)).to(device) for a in arrays)


def _history(split: SplitResult, device) -> torch.Tensor | None:
    h = split.train_history
    return _mapped_tensor(h, device) if h.shape[1] else None


def _mapped_tensor(array, device) -> torch.Tensor:
    with warnings.catch_warnings():
        # read_split maps it read-only: torch warns that the tensor could not be written to
        # (it never is) and, on the CPU, shares the map instead of copying it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


class GivenLabels:
    def __init__(self, split: CTRSplit, device, device_epochs=False):
        self.codes = split.train.codes  # numpy, possibly memory-mapped: gathered per batch
        self.labels = torch.from_numpy(split.train.labels).to(device)
        self.device = device
        self.device_codes = None
        if device_epochs:  # every row's codes on the device once (on the CPU: the map itself)
            self.device_codes = _mapped_tensor(self.codes, device)

    def batches(
        self, epoch: int, batch_size: int, shuffle: torch.Generator, shard=None
    ) -> Iterator:
        rows = torch.arange(len(self.labels), device=self.labels.device)
        if self.device_codes is None:
            rows = rows.cpu()
        for (r,) in iterate_batches((rows,), batch_size, shuffle, shard):
            if self.device_codes is not None:
                codes = self.device_codes[r]
            else:  # read the mapped file in ascending row order, keep the batch's own order
                index = r.numpy()
                ahead = np.argsort(index, kind="stable")
                codes = np.empty((len(index), self.codes.shape[1]), dtype=self.codes.dtype)
                codes[ahead] = self.codes[index[ahead]]
                codes = torch.from_numpy(codes).to(self.device)
            placeholder = torch.zeros(len(r), dtype=torch.long, device=self.device)
            yield placeholder, placeholder, self.labels[r.to(self.device)], codes

    loss = Pointwise.loss


def make_objective(cfg, split: SplitResult | CTRSplit, rated: RatedIndex | None, device):
    """The objective of cfg.model: its section's `loss` (bce when it has none)."""
    tc = cfg.train
    loss = getattr(cfg.model_params, "loss", "bce")
    if isinstance(split, CTRSplit):
        if loss != "bce":
            raise TrainingError(
                f"{cfg.model}.loss is {loss!r}, which ranks items; the ctr protocol trains on "
                f"each row's given label: set {cfg.model}.loss to bce."
            )
        return GivenLabels(split, device, tc.device_epochs)
    catalogue_weight = getattr(cfg.model_params, "catalogue_weight", 0.0)
    if catalogue_weight and loss != "bce_grouped":
        raise TrainingError(
            f"{cfg.model}.catalogue_weight is {catalogue_weight}, a term added to loss "
            f"bce_grouped, but {cfg.model}.loss is {loss!r}: set {cfg.model}.loss to "
            f"bce_grouped or {cfg.model}.catalogue_weight to 0."
        )
    if loss == "softmax":
        return NextItemSoftmax(split, rated, device=device, targets=tc.targets)
    sampled = dict(
        seed=cfg.seed,
        negatives_per_positive=tc.negatives_per_positive,
        device=device,
        targets=tc.targets,
        device_epochs=tc.device_epochs,
    )
    if loss == "bce_grouped":
        return GroupedPointwise(split, rated, **sampled, catalogue_weight=catalogue_weight)
    return Pointwise(split, rated, **sampled)
