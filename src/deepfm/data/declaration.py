"""A dataset, declared in params.yaml (`datasets.<name>`): where its files come from, how the
label is made, and which fields the models see. A new dataset is a block of params, no code
(an example: docs/architecture.md, "Add a dataset"; each key: FieldSpec, FileSpec and
DatasetSpec below). Every key is checked here, with an error that names it, the value and
what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

FIELD_SOURCES = ("user", "item", "context")
FIELD_KINDS = ("sparse", "sequence", "dense")
SCALERS = ("standard", "minmax", "none")
FILE_ROLES = ("interactions", "users", "items")
CANONICAL_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "label")
# sources read from a declared file (path + sha256) rather than a downloaded archive
FILE_SOURCES = ("local", "criteo", "avazu")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DATASET_KEYS = ("source", "protocol", "files", "columns", "label", "fields", "options")
FIELD_OPTIONS = (
    "source",
    "kind",
    "min_count",
    "max_length",
    "separator",
    "bins",
    "log_buckets",
    "scaler",
    "missing",
)
# the options (beyond source and kind) that each kind of field takes
KIND_OPTIONS = {
    "sparse": {"min_count", "bins", "log_buckets"},
    "sequence": {"min_count", "max_length", "separator"},
    "dense": {"scaler", "missing"},
}


class DeclarationError(ValueError):
    """A dataset declaration problem; the message names the key and the fix."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    # user | item: looked up by the example's user or item; context: a column of the
    # interaction itself (e.g. the device), known for the held-out interaction too
    source: str
    kind: str  # sparse (one code) | sequence (a bag of codes) | dense (a number)
    # sparse / sequence: values seen on fewer train users / items than this -> code 0 (unknown)
    min_count: int = 1
    max_length: int = 0  # sequence: keep the first n values of each bag; 0 = all
    separator: str = "|"  # sequence held as text in a local file: the values' separator
    bins: tuple[float, ...] = ()  # sparse from a number: one code per interval of these edges
    # sparse from a count: x > 2 -> floor(ln(x) ** 2), else x (the Criteo winners' bucketing)
    log_buckets: bool = False
    scaler: str = "standard"  # dense: fitted on the train split's users / items only
    missing: str | float = "mean"  # dense: a missing value becomes the train mean, or a number


@dataclass(frozen=True)
class FileSpec:
    path: str
    sha256: str
    format: str  # csv | parquet (from the file name unless given)
    separator: str = ","


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str  # "local", or the name of a registered release (deepfm.data.sources)
    fields: tuple[FieldSpec, ...]
    label_threshold: float | None = None  # label = rating >= threshold
    label_column: str | None = None  # or a given 0/1 label (canonical name "label")
    files: dict[str, FileSpec] = field(default_factory=dict)  # local: role -> file
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> file column
    options: dict[str, Any] = field(default_factory=dict)  # release parser options
    # topk: leave-one-out ranking (docs/protocol.md); ctr: a given label per row, rows split
    # by order (or seeded random) into train / validation / test, scored by AUC and LogLoss
    protocol: str = "topk"
    ctr_split: str = "order"  # ctr: order (the file's row order, i.e. time) | random (seeded)
    ctr_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # ctr: the field whose raw values group the rows for group AUC (a user, a device), or None
    ctr_group: str | None = None

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


def _fail(key: str, message: str) -> DeclarationError:
    return DeclarationError(f"params.yaml: '{key}' {message}")


def _mapping(value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(key, f"is {value!r}; it must be a mapping of keys.")
    return value


def _only(raw: dict, allowed: tuple[str, ...], key: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise _fail(
            f"{key}.{unknown[0]}", f"is not a known key; allowed here: {', '.join(allowed)}."
        )


def _int(raw: dict, name: str, key: str, default: int, lo: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _fail(f"{key}.{name}", f"is {value!r}; it must be an integer >= {lo}.")
    return value


def _choice(raw: dict, name: str, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(name, default)
    if value not in allowed:
        raise _fail(f"{key}.{name}", f"is {value!r}; allowed: {', '.join(allowed)}.")
    return value


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_field(name: str, raw, key: str) -> FieldSpec:
    raw = _mapping(raw, key)
    _only(raw, FIELD_OPTIONS, key)
    source, kind = _field_source_and_kind(raw, key)
    bins, separator, log_buckets, missing = _field_values(raw, key)
    _check_field_role(name, source, kind, key)
    return FieldSpec(
        name=name,
        source=source,
        kind=kind,
        min_count=_int(raw, "min_count", key, 1, 1),
        max_length=_int(raw, "max_length", key, 0, 0),
        separator=separator,
        bins=tuple(float(b) for b in bins),
        log_buckets=log_buckets,
        scaler=_choice(raw, "scaler", key, "standard", SCALERS),
        missing=float(missing) if _number(missing) else missing,
    )


def _field_source_and_kind(raw: dict, key: str) -> tuple[str, str]:
    """The field's source and kind, which it must give, and that its options are its kind's."""
    for required in ("source", "kind"):
        if required not in raw:
            raise _fail(key, f"lacks '{required}'; e.g. {{source: user, kind: sparse}}.")
    source = _choice(raw, "source", key, "", FIELD_SOURCES)
    kind = _choice(raw, "kind", key, "", FIELD_KINDS)
    for option in set(raw) - {"source", "kind"} - KIND_OPTIONS[kind]:
        raise _fail(
            f"{key}.{option}",
            f"does not apply to a {kind} field; its options: "
            f"{', '.join(sorted(KIND_OPTIONS[kind]))}.",
        )
    return source, kind


def _field_values(raw: dict, key: str) -> tuple[list, str, bool, str | float]:
    """The options whose values are checked here (bins, separator, log_buckets, missing),
    defaults filled in."""
    bins = raw.get("bins", [])
    if not isinstance(bins, list) or not all(_number(b) for b in bins) or bins != sorted(bins):
        raise _fail(f"{key}.bins", f"is {bins!r}; it must be an increasing list of numbers.")
    separator = raw.get("separator", "|")
    if not isinstance(separator, str) or not separator:
        raise _fail(f"{key}.separator", f"is {separator!r}; it must be a non-empty string.")
    log_buckets = raw.get("log_buckets", False)
    if not isinstance(log_buckets, bool) or (log_buckets and bins):
        raise _fail(
            f"{key}.log_buckets",
            f"is {log_buckets!r}; it must be true or false, and not set together with bins.",
        )
    missing = raw.get("missing", "mean")
    if missing != "mean" and not _number(missing):
        raise _fail(f"{key}.missing", f"is {missing!r}; it must be 'mean' or a number.")
    return bins, separator, log_buckets, missing


def _check_field_role(name: str, source: str, kind: str, key: str) -> None:
    """What a context field and the user and item ids must be."""
    if source == "context" and kind != "sparse":
        raise _fail(
            f"{key}.kind",
            f"is {kind!r}; a context field is sparse (bucket a number with bins: [...]).",
        )
    if name in ("user_id", "item_id") and (kind != "sparse" or source != name[:4]):
        raise _fail(key, f"must be {{source: {name[:4]}, kind: sparse}}: it is the {name[:4]} id.")


def _parse_file(raw, key: str, fmt: str | None = None) -> FileSpec:
    """fmt: the file's format when the source fixes it (a click log's own layout)."""
    raw = _mapping(raw, key)
    _only(raw, ("path", "sha256") if fmt else ("path", "sha256", "format", "separator"), key)
    path = raw.get("path")
    if not isinstance(path, str) or not path:
        raise _fail(
            f"{key}.path", f"is {path!r}; give the file's path (absolute or repo-relative)."
        )
    sha = raw.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise _fail(
            f"{key}.sha256",
            f"is {sha!r}; give the file's sha256 (64 hex digits, e.g. from `sha256sum {path}`).",
        )
    if fmt:
        return FileSpec(path=path, sha256=sha, format=fmt)
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    fmt = raw.get("format", {"csv": "csv", "tsv": "csv", "parquet": "parquet"}.get(suffix))
    if fmt not in ("csv", "parquet"):
        raise _fail(f"{key}.format", f"is {fmt!r}; set format: csv or format: parquet.")
    separator = raw.get("separator", "\t" if suffix == "tsv" else ",")
    if not isinstance(separator, str) or len(separator) != 1:
        raise _fail(f"{key}.separator", f"is {separator!r}; it must be one character.")
    return FileSpec(path=path, sha256=sha, format=fmt, separator=separator)


def parse_dataset(name: str, raw, registered: tuple[str, ...]) -> DatasetSpec:
    """One `datasets.<name>` block -> DatasetSpec. `registered`: the known release names."""
    key = f"datasets.{name}"
    raw = _mapping(raw, key)
    _only(raw, DATASET_KEYS, key)
    source = raw.get("source")
    protocol, ctr_split, ctr_fractions, ctr_group = _parse_protocol(
        raw.get("protocol", "topk"), key
    )
    if source != "local" and source not in registered:
        raise _fail(
            f"{key}.source",
            f"is {source!r}; use 'local' (your own files) or a registered release: "
            f"{', '.join(registered)}.",
        )
    threshold, label_column = _parse_label(raw.get("label"), key)
    fields_raw = _mapping(raw.get("fields"), f"{key}.fields")
    fields = tuple(parse_field(n, r, f"{key}.fields.{n}") for n, r in fields_raw.items())
    if protocol == "ctr":
        _check_ctr_fields(fields, label_column, ctr_group, key)
    _check_fields(fields, protocol, key)
    files, columns = _parse_files(raw, source, label_column, key)
    options = _mapping(raw.get("options"), f"{key}.options")
    return DatasetSpec(
        name=name,
        source=source,
        fields=fields,
        label_threshold=float(threshold) if threshold is not None else None,
        label_column=label_column,
        files=files,
        columns=columns,
        options=options,
        protocol=protocol,
        ctr_split=ctr_split,
        ctr_fractions=ctr_fractions,
        ctr_group=ctr_group,
    )


def _parse_label(raw, key: str) -> tuple[Any, str | None]:
    """The label rule: (threshold, None) or (None, column)."""
    label = _mapping(raw, f"{key}.label")
    _only(label, ("threshold", "column"), f"{key}.label")
    if len(label) != 1:
        raise _fail(
            f"{key}.label",
            "must hold exactly one rule: {threshold: 4} (label = rating >= 4, any numeric "
            "scale) or {column: clicked} (a given 0/1 label).",
        )
    threshold = label.get("threshold")
    if "threshold" in label and not _number(threshold):
        raise _fail(f"{key}.label.threshold", f"is {threshold!r}; it must be a number.")
    label_column = label.get("column")
    if "column" in label and (not isinstance(label_column, str) or not label_column):
        raise _fail(f"{key}.label.column", f"is {label_column!r}; name the 0/1 label column.")
    return threshold, label_column


def _check_ctr_fields(fields, label_column: str | None, group: str | None, key: str) -> None:
    """Under the ctr protocol every field is a column of the row, the label is given per row,
    and the group names a field."""
    other = [f.name for f in fields if f.source != "context"]
    if other or not fields:
        raise _fail(
            f"{key}.fields",
            f"{'has ' + ', '.join(other) if other else 'is empty'}: under the ctr protocol "
            "every field is a column of the row, {source: context, kind: sparse}.",
        )
    if label_column is None:
        raise _fail(
            f"{key}.label",
            "must be {column: <its 0/1 click column>} under the ctr protocol: the label "
            "is given per row.",
        )
    if group is not None and group not in {f.name for f in fields}:
        raise _fail(
            f"{key}.protocol.group",
            f"is {group!r}, not a declared field; name the field whose values are "
            f"the users (fields: {', '.join(f.name for f in fields)}).",
        )


def _check_fields(fields, protocol: str, key: str) -> None:
    """The ids that the topk protocol ranks by, and no field named as the split's own."""
    for required in ("user_id", "item_id") if protocol == "topk" else ():
        if not any(f.name == required for f in fields):
            raise _fail(
                f"{key}.fields",
                f"lacks '{required}'; add {required}: {{source: {required[:4]}, kind: sparse}}.",
            )
    if any(f.name == "history" for f in fields):
        raise _fail(
            f"{key}.fields.history",
            "is reserved: the history field is made by the split (split.history_length).",
        )


def _parse_files(
    raw: dict, source, label_column: str | None, key: str
) -> tuple[dict[str, FileSpec], dict[str, str]]:
    """(files, columns): a click log's one declared file, or a local dataset's files and the
    file column of each canonical column; none for a registered release."""
    files: dict[str, FileSpec] = {}
    columns: dict[str, str] = {}
    if source in FILE_SOURCES and source != "local":  # a click log: one declared file
        login = f": {source} is not downloaded (its terms need a login); give the path of your"
        files = _files(raw, key, ("interactions",), f"{login} copy and its sha256.", source)
    elif source == "local":
        example = "; e.g. interactions: {path: data.csv, sha256: <64 hex>}."
        files = _files(raw, key, FILE_ROLES, example)
        columns = _local_columns(raw, label_column, key)
    if source != "local" and raw.get("columns"):
        raise _fail(f"{key}.columns", f"applies to source: local only; {source} has a parser.")
    if source not in FILE_SOURCES and raw.get("files"):
        raise _fail(
            f"{key}.files",
            f"applies to source: local only; {source} is fetched from its registered archive.",
        )
    return files, columns


def _files(raw: dict, key: str, roles, hint: str, fmt: str | None = None) -> dict[str, FileSpec]:
    """The declared files by role (`roles` allowed, interactions required; `hint` follows
    the error of a missing one); fmt: as _parse_file's."""
    files_raw = _mapping(raw.get("files"), f"{key}.files")
    _only(files_raw, roles, f"{key}.files")
    if "interactions" not in files_raw:
        raise _fail(f"{key}.files", f"lacks 'interactions'{hint}")
    return {r: _parse_file(v, f"{key}.files.{r}", fmt) for r, v in files_raw.items()}


def _local_columns(raw: dict, label_column: str | None, key: str) -> dict[str, str]:
    """The file column of each canonical column: as mapped under `columns`, else its own
    name; the label's is the label rule's column."""
    columns_raw = _mapping(raw.get("columns"), f"{key}.columns")
    _only(columns_raw, CANONICAL_COLUMNS, f"{key}.columns")
    for canonical, column in columns_raw.items():
        if not isinstance(column, str) or not column:
            raise _fail(f"{key}.columns.{canonical}", f"is {column!r}; name a file column.")
    columns = {c: columns_raw.get(c, c) for c in CANONICAL_COLUMNS}
    if label_column is not None:
        columns["label"] = label_column
    return columns


def _parse_protocol(raw, key: str) -> tuple[str, str, tuple[float, float, float], str | None]:
    """`topk`, `ctr`, or {name: ctr, split: order|random, fractions: [train, val, test],
    group: <field>}."""
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = _mapping(raw, f"{key}.protocol")
    _only(raw, ("name", "split", "fractions", "group"), f"{key}.protocol")
    name = _choice(raw, "name", f"{key}.protocol", "topk", ("topk", "ctr"))
    split = _choice(raw, "split", f"{key}.protocol", "order", ("order", "random"))
    fractions = raw.get("fractions", [0.8, 0.1, 0.1])
    ok = (
        isinstance(fractions, list)
        and len(fractions) == 3
        and all(_number(f) and f > 0 for f in fractions)
        and abs(sum(fractions) - 1.0) < 1e-9
    )
    if not ok:
        raise _fail(
            f"{key}.protocol.fractions",
            f"is {fractions!r}; give three positive fractions (train, validation, test) that "
            "sum to 1, e.g. [0.8, 0.1, 0.1].",
        )
    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise _fail(f"{key}.protocol.group", f"is {group!r}; name a declared field.")
    if name == "topk" and set(raw) - {"name"}:
        raise _fail(f"{key}.protocol", "split, fractions and group apply to the ctr protocol only.")
    return name, split, tuple(float(f) for f in fractions), group
