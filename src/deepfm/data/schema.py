"""The feature schema: which fields a model sees, where each comes from and its vocabulary size."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
