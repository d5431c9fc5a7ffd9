"""Where a corpus's documents are read from: local .txt / .jsonl / .parquet files and folders,
and Hugging Face datasets streamed through `datasets`.

Each reader yields `Document`s in a deterministic order and reports what it cannot use (a file
that is not UTF-8, a line that is not JSON, a record without the text field) through `skip`,
never by raising; only a source that cannot be opened at all raises `CorpusError`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from scope.errors import CorpusError


class Document(NamedTuple):
    """One document: `key` names it stably (relative path, `path:line`, `name:row`)."""

    key: str
    text: str


#: `skip(reason, where)`: count one unusable document or line
Skip = Callable[[str, str], None]

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
READABLE_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def _extra(module: str, what: str) -> Any:
    """`module` of the corpus extra, or a CorpusError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - pyarrow and datasets are in the corpus extra
        raise CorpusError(f"{what} needs `{module.split('.')[0]}`: pip install "
                          "'gemma-scope-toolkit[corpus]'") from exc


def path_documents(path: Path, text_field: str, skip: Skip) -> Iterator[Document]:
    """Documents of a local file or folder (.txt whole, .jsonl per line, .parquet per row)."""
    if path.is_file():
        files = [(path, path.name)]
    else:
        files = [
            (p, p.relative_to(path).as_posix())
            for p in sorted(path.rglob("*"), key=lambda p: p.relative_to(path).as_posix())
            if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES
        ]
        if not files:
            raise CorpusError(
                f"corpus folder {path} holds no .txt, .jsonl or .parquet files"
            )
    for file, rel in files:
        suffix = file.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from jsonl_documents(file, rel, text_field, skip)
        elif suffix in PARQUET_SUFFIXES:
            yield from parquet_documents(file, rel, text_field, skip)
        elif suffix in TEXT_SUFFIXES or path.is_file():
            text = read_text(file, rel, skip)
            if text is not None:
                yield Document(rel, text)

def read_text(file: Path, rel: str, skip: Skip) -> str | None:
    """The UTF-8 text of a file, or None (counted as skipped) when it is not readable text."""
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        skip("not UTF-8", rel)
    except OSError as exc:
        skip(f"unreadable ({type(exc).__name__})", rel)
    return None

def jsonl_documents(file: Path, rel: str, text_field: str, skip: Skip) -> Iterator[Document]:
    """One document per JSON line holding a string in `text_field`; other lines are skipped."""
    try:
        handle = file.open("rb")
    except OSError as exc:
        skip(f"unreadable ({type(exc).__name__})", rel)
        return
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{rel}:{lineno}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                skip("not UTF-8", where)
                continue
            except json.JSONDecodeError:
                skip("line is not JSON", where)
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                skip(f"no text field {text_field!r}", where)
                continue
            yield Document(where, text)

def parquet_documents(file: Path, rel: str, text_field: str, skip: Skip
                      ) -> Iterator[Document]:
    """One document per row of the `text_field` column."""
    pq = _extra("pyarrow.parquet", f"reading {file}")
    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for bad files
        skip(f"unreadable parquet ({type(exc).__name__})", rel)
        return
    if text_field not in pf.schema_arrow.names:
        raise CorpusError(
            f"{file}: no column {text_field!r} (columns: "
            f"{', '.join(pf.schema_arrow.names)}); pass --text-field NAME"
        )
    row = 0
    for batch in pf.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield Document(f"{rel}:{row}", text)
            else:
                skip(f"no text in field {text_field!r}", f"{rel}:{row}")
            row += 1


def hf_documents(name: str, hf_config: str | None, hf_split: str, text_field: str,
                 skip: Skip) -> Iterator[Document]:
    """A Hugging Face dataset streamed through `datasets`."""
    datasets = _extra("datasets", f"corpus hf:{name}")
    try:
        ds = datasets.load_dataset(name, hf_config, split=hf_split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - hub, network and config errors alike
        raise CorpusError(
            f"cannot open Hugging Face dataset {name!r} (config {hf_config!r}, split "
            f"{hf_split!r}): {exc}. Streaming needs network access, or a local copy "
            f"in the datasets cache."
        ) from exc
    for row, record in enumerate(ds):
        text = record.get(text_field)
        if isinstance(text, str):
            yield Document(f"{name}:{row}", text)
        else:
            skip(f"no text field {text_field!r}", f"{name}:{row}")
