"""Reading a corpus to encode: a JSONL or parquet file of inputs, each with an id.

- JSONL: one JSON string (text) or object a line; blank lines are skipped. An object's ``text``,
  ``image``, ``video`` and ``instruction`` keys (names configurable with :class:`Columns`) make the
  input, its ``id`` key names it; any other key reaches the model, which reports it as an unknown key.
- Parquet: the ``text``, ``image``, ``video``, ``instruction`` and ``id`` columns that exist are read;
  others are ignored. An image cell is a path, encoded bytes, or a ``{"bytes", "path"}`` struct (as HF
  datasets stores images); a video cell is a file or frame-folder path, or a list of frame paths.

Ids come from the id column when the file has one (all ints or all strings, unique, none missing),
else from line numbers (JSONL, from 1) or row numbers (parquet, from 0). Relative image and video paths
start at ``image_root`` (default: the input file's folder), so a corpus file and its media can move
together.

Only ids and where each record lies are kept in memory: records are read back on demand, one shard
at a time, so a corpus far larger than memory can be encoded.
"""

from __future__ import annotations

import bisect
import json
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import pyarrow.parquet as pq


class CorpusError(ValueError):
    """A malformed corpus file; the message names the file and the line or row."""


@dataclass(frozen=True)
class Columns:
    """Where each field of an input is found (JSONL keys or parquet columns)."""

    id: str = "id"
    text: str = "text"
    image: str = "image"
    instruction: str = "instruction"
    video: str = "video"

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["video"] == "video":  # as jobs written before videos were read record it: they resume
            del out["video"]
        return out


def to_input(record, columns: Columns = Columns(), image_root: str | None = None):
    """The model input of one record: a str stays text; a dict's mapped fields are renamed to
    ``text`` / ``image`` / ``video`` / ``instruction`` (None and missing fields dropped), relative
    image and video paths joined to ``image_root``; keys other than the id and the mapped fields pass
    through unchanged."""
    if not isinstance(record, dict):
        return record
    mapped = {columns.text: "text", columns.image: "image", columns.instruction: "instruction"}
    mapped[columns.video] = "video"
    out = {}
    for key, value in record.items():
        if key == columns.id or value is None:
            continue
        name = mapped.get(key, key)
        if name == "image":
            value = _image(value, image_root)
        elif name == "video":
            value = _video(value, image_root)
        out[name] = value
    return out


def _video(value, root: str | None):
    """A video path (file or frame folder) or a list of frame paths, relative ones joined to ``root``."""
    if getattr(value, "ndim", None) == 1 and getattr(value.dtype, "kind", "") in "OU":
        value = value.tolist()  # a list cell as Ray Data's numpy batches hold it
    if isinstance(value, list):
        return [_image(frame, root) for frame in value]
    return _image(value, root)


def _image(value, image_root: str | None):
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # HF datasets' Image struct
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and image_root is not None and not os.path.isabs(value):
        return os.path.join(image_root, value)
    return value


class Corpus(ABC):
    """Ids of a corpus file and its records, read back by position."""

    path: str
    ids: list
    id_source: str  # "column" or "line" / "row"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def id_type(self) -> str:
        """``"int64"`` or ``"string"``: the type of the output's id column."""
        return "string" if self.ids and isinstance(self.ids[0], str) else "int64"

    columns: Columns
    image_root: str

    @abstractmethod
    def where(self, position: int) -> str:
        """``FILE:LINE`` (JSONL) or ``FILE row N`` (parquet): for error messages."""

    @abstractmethod
    def raw_records(self, positions: list[int]) -> list:
        """The records at ``positions`` (in that order), as read from the file."""

    def records(self, positions: list[int]) -> list:
        """The model inputs at ``positions`` (see :func:`to_input`)."""
        return [to_input(r, self.columns, self.image_root) for r in self.raw_records(positions)]


def open_corpus(path: str, columns: Columns = Columns(), image_root: str | None = None) -> Corpus:
    """A :class:`Corpus` over a ``.jsonl`` (or ``.json`` lines) or ``.parquet`` file."""
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: no such file")
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    if path.endswith(".parquet"):
        return ParquetCorpus(path, columns, root)
    if path.endswith((".jsonl", ".json", ".ndjson")):
        return JsonlCorpus(path, columns, root)
    raise CorpusError(f"{path}: expected a .jsonl or .parquet file")


class _Ids:
    """Collects ids, checking that they are all ints or all strings, and unique."""

    def __init__(self, path: str):
        self.path, self.ids, self.first_seen = path, [], {}

    def add(self, value, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise CorpusError(f"{where}: an id must be an int or a string, got {type(value).__name__}")
        if self.ids and isinstance(value, str) != isinstance(self.ids[0], str):
            raise CorpusError(
                f"{where}: id {value!r} is a {type(value).__name__}, but earlier ids are "
                f"{type(self.ids[0]).__name__}s (use one type for all ids)"
            )
        if value in self.first_seen:
            raise CorpusError(f"{where}: duplicate id {value!r} (first at {self.first_seen[value]})")
        self.first_seen[value] = where
        self.ids.append(value)


class JsonlCorpus(Corpus):
    def __init__(self, path: str, columns: Columns, image_root: str):
        self.path, self.columns, self.image_root = path, columns, image_root
        self.offsets: list[int] = []
        self.line_numbers: list[int] = []
        ids, missing = _Ids(path), None
        with open(path, "rb") as f:
            offset = 0
            for line_number, line in enumerate(f, 1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                record = self._parse(line, line_number)
                where = f"{path}:{line_number}"
                has_id = isinstance(record, dict) and columns.id in record
                if has_id:
                    if missing is not None:
                        raise CorpusError(f"{missing}: no {columns.id!r} key, but {where} has one")
                    ids.add(record[columns.id], where)
                elif ids.ids:
                    raise CorpusError(f"{where}: no {columns.id!r} key, but earlier lines have one")
                else:
                    missing = missing or where
                self.offsets.append(start)
                self.line_numbers.append(line_number)
        if not self.offsets:
            raise CorpusError(f"{path}: no inputs")
        self.id_source = "column" if ids.ids else "line"
        self.ids = ids.ids if ids.ids else list(self.line_numbers)

    def _parse(self, line: bytes, line_number: int):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            message = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            raise CorpusError(f"{self.path}:{line_number}: not valid JSON ({message})") from None
        if not isinstance(record, (str, dict)):
            raise CorpusError(
                f"{self.path}:{line_number}: expected a string or an object, got {type(record).__name__}"
            )
        return record

    def where(self, position: int) -> str:
        return f"{self.path}:{self.line_numbers[position]}"

    def raw_records(self, positions: list[int]) -> list:
        out = []
        with open(self.path, "rb") as f:
            for p in positions:
                f.seek(self.offsets[p])
                out.append(self._parse(f.readline(), self.line_numbers[p]))
        return out


class ParquetCorpus(Corpus):
    def __init__(self, path: str, columns: Columns, image_root: str):
        self.path, self.columns, self.image_root = path, columns, image_root
        try:
            self.file = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise CorpusError(f"{path}: not a readable parquet file ({err})") from None
        names = set(self.file.schema_arrow.names)
        fields = (columns.text, columns.image, columns.instruction, columns.video)
        self.read_columns = [c for c in fields if c in names]
        if not {columns.text, columns.image, columns.video} & names:
            raise CorpusError(
                f"{path}: has none of the {columns.text!r}, {columns.image!r} and {columns.video!r} "
                f"columns (columns: {sorted(names)})"
            )
        n = self.file.metadata.num_rows
        if n == 0:
            raise CorpusError(f"{path}: no inputs")
        self.group_starts = [0]
        for g in range(self.file.num_row_groups):
            self.group_starts.append(self.group_starts[-1] + self.file.metadata.row_group(g).num_rows)
        self._cached_group: tuple[int, list] | None = None
        if columns.id in names:
            self.id_source = "column"
            ids = _Ids(path)
            values = self.file.read(columns=[columns.id]).column(0).to_pylist()
            for row, value in enumerate(values):
                if value is None:
                    raise CorpusError(f"{path} row {row}: the {columns.id!r} column is empty")
                ids.add(value, f"{path} row {row}")
            self.ids = ids.ids
        else:
            self.id_source = "row"
            self.ids = list(range(n))

    def where(self, position: int) -> str:
        return f"{self.path} row {position}"

    def _group(self, g: int) -> list:
        if self._cached_group is None or self._cached_group[0] != g:
            table = self.file.read_row_group(g, columns=self.read_columns)
            self._cached_group = (g, table.to_pylist())
        return self._cached_group[1]

    def raw_records(self, positions: list[int]) -> list:
        out = []
        for p in positions:
            g = bisect.bisect_right(self.group_starts, p) - 1
            out.append(self._group(g)[p - self.group_starts[g]])
        return out
