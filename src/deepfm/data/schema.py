"""The feature schema: which fields a model sees, where each comes from and its vocabulary size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Field:
    name: str
    source: Literal["user", "item"]  # looked up by user index or by item index
    kind: Literal["sparse", "sequence"]  # one code, or a padded bag of codes (mean-pooled)
    vocab_size: int  # number of codes including 0 = padding / unknown
    column: int  # column in the source's feature matrix (sparse) or index of the bag matrix
    length: int = 0  # a sequence field's bag width when fixed by the data (the history), else 0


@dataclass(frozen=True)
class Schema:
    fields: tuple[Field, ...]
    num_users: int
    num_items: int

    def to_dict(self) -> dict:
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "fields": [asdict(f) for f in self.fields],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls(
            fields=tuple(Field(**f) for f in d["fields"]),
            num_users=int(d["num_users"]),
            num_items=int(d["num_items"]),
        )

    def field(self, name: str) -> Field | None:
        """The field called `name` (e.g. "item_id", "history"), or None."""
        return next((f for f in self.fields if f.name == name), None)

    def by_source(self, source: str, kind: str) -> list[Field]:
        return [f for f in self.fields if f.source == source and f.kind == kind]

    def reading_history(self, length: int) -> Schema:
        """This schema for a model that reads the `length` most recent of the history field's
        items (0: all of them). The split's history matrices stay as they are: most recent
        first, so their first `length` columns are exactly what a split with that
        history_length would hold."""
        history = self.field("history")
        if not length or history is None or history.length == length:
            return self
        if length > history.length:
            raise ValueError(
                f"the model reads {length} history items but the split holds "
                f"{history.length} (split.history_length): raise split.history_length to "
                f"{length} or lower the model's history_length."
            )
        shorter = replace(history, length=length)
        return replace(self, fields=tuple(shorter if f is history else f for f in self.fields))
