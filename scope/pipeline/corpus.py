"""Text sources -> token windows: the first step of every pipeline that reads text.

A `Corpus` names where documents come from: the embedded default (the Python standard library's
own source files, docstrings included, present on every machine with Python), local `.txt`,
`.jsonl` (one document per line, in a named field) and `.parquet` files or folders of them, a
Hugging Face dataset streamed through `datasets` (`hf:NAME`), or an in-memory list of texts.

`token_windows(corpus, tokenizer, ctx)` turns documents into fixed-length windows
`[pos=ctx]` (or batches `[batch, pos]`): documents are tokenized without special tokens, each
followed by the separator "\\n\\n", concatenated in corpus order into one token stream, and
cut into consecutive chunks of `ctx - 1` tokens; every window is `[BOS] + chunk`. So a long
document spans several windows, windows never hold padding, and the order is deterministic (a
final partial chunk is dropped). Window `g` (0-based, in stream order) is the *global window
index*; `shard=(i, n)` keeps windows with `(g // block) % n == i` (`block=1` by default; the
extractor shards whole batches so every shard's batches are exactly the single run's), so shards
partition exactly the windows a single run sees. `max_tokens` is a budget of window tokens (BOS included) over all shards,
rounded up to whole windows.

Bad input never raises a bare traceback: unreadable, empty or non-UTF-8 files, JSONL lines
that are not JSON or lack the text field are skipped, counted in `corpus.skipped` and logged;
a corpus that yields no text at all raises `CorpusError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from scope.errors import CorpusError
from scope.pipeline.corpus_sources import (
    Document,
    hf_documents,
    path_documents,
    read_text,
)

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "default"
HF_PREFIX = "hf:"
SEPARATOR = "\n\n"
SPLITS = ("all", "train", "heldout")
HELDOUT_PERCENT = 5
# Folders of the standard library that are not library text (third-party code, tests, caches).
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


class Window(NamedTuple):
    """One token window: `index` is its global window index, `tokens` is `[pos]` int64."""

    index: int
    tokens: torch.Tensor


@dataclass
class Corpus:
    """Where documents come from, and which of them to use.

    Attributes:
        source: "default" (the standard library's source), a local file or folder, or
            "hf:NAME" for a Hugging Face dataset streamed with `datasets`.
        text_field: JSONL / parquet / dataset field holding the text.
        split: "all", or "train" / "heldout": a stable split by a hash of each document's key
            (~5% held out), so a trainer can report metrics on text it never saw.
        hf_config: dataset configuration name (Hugging Face sources only).
        hf_split: dataset split (Hugging Face sources only).
        texts: in-memory documents; when given, `source` is only a label.
    """

    source: str = DEFAULT_SOURCE
    text_field: str = "text"
    split: str = "all"
    hf_config: str | None = None
    hf_split: str = "train"
    texts: tuple[str, ...] | None = None
    skipped: Counter = field(default_factory=Counter, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise CorpusError(f"corpus split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.texts is not None:
            self.texts = tuple(self.texts)
            if self.source == DEFAULT_SOURCE:
                self.source = "texts"
        self.source = str(self.source)

    @classmethod
    def from_texts(cls, texts: Sequence[str], **kwargs: Any) -> Corpus:
        """A corpus of in-memory documents (tests, notebooks)."""
        return cls(source="texts", texts=tuple(texts), **kwargs)

    def describe(self) -> dict:
        """A JSON-able description for manifests (enough to rebuild the same corpus)."""
        desc: dict[str, Any] = {"source": self.source, "split": self.split}
        if self.source == DEFAULT_SOURCE:
            desc["stdlib"] = _stdlib_root().as_posix()
            desc["python"] = ".".join(map(str, __import__("sys").version_info[:3]))
        elif self.texts is not None:
            digest = hashlib.sha256("\0".join(self.texts).encode("utf-8")).hexdigest()
            desc.update(n_texts=len(self.texts), sha256=digest[:16])
        else:
            desc["text_field"] = self.text_field
            if self.source.startswith(HF_PREFIX):
                desc.update(hf_config=self.hf_config, hf_split=self.hf_split)
        return desc

    def documents(self) -> Iterator[Document]:
        """Yield the corpus's non-empty documents in a deterministic order.

        Resets and fills `self.skipped` (reason -> count). Raises `CorpusError` when the source
        does not exist or yields no text at all.
        """
        self.skipped.clear()
        n = other = 0
        for doc in self._raw_documents():
            if not doc.text.strip():
                self._skip("empty document", doc.key)
                continue
            if self.split != "all" and (is_heldout(doc.key) != (self.split == "heldout")):
                other += 1
                continue
            n += 1
            yield doc
        if self.skipped:
            log.warning("corpus %s: skipped %s", self.source, dict(self.skipped))
        if n == 0 and other:
            split = "train" if self.split == "heldout" else "held-out"
            raise CorpusError(
                f"corpus {self.source!r}: all {other} of its documents fall in the {split} split, "
                f"none in {self.split!r} (a hash of each document's name holds out about "
                f"{HELDOUT_PERCENT}% of documents); use split 'all' (--split all) or give more "
                "documents")
        if n == 0:
            detail = f" (skipped: {dict(self.skipped)})" if self.skipped else ""
            raise CorpusError(
                f"corpus {self.source!r} (split {self.split!r}) holds no readable text{detail}; "
                f"give .txt/.jsonl/.parquet files with UTF-8 text, or omit --corpus to use the "
                f"default (Python's standard library source)"
            )

    # -- sources ------------------------------------------------------------------------------

    def _skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        log.debug("corpus: skipping %s: %s", where, reason)

    def _raw_documents(self) -> Iterator[Document]:
        if self.texts is not None:
            for i, text in enumerate(self.texts):
                yield Document(f"text:{i}", text)
            return
        if self.source == DEFAULT_SOURCE:
            yield from self._stdlib_documents()
            return
        path = Path(self.source).expanduser()
        if path.exists():
            yield from path_documents(path, self.text_field, self._skip)
            return
        name = self.source[len(HF_PREFIX) :] if self.source.startswith(HF_PREFIX) else None
        if name is None:
            raise CorpusError(
                f"corpus {self.source!r}: no such file or folder; for a Hugging Face dataset "
                f"write hf:{self.source}"
            )
        yield from hf_documents(name, self.hf_config, self.hf_split, self.text_field,
                                self._skip)

    def _stdlib_documents(self) -> Iterator[Document]:
        root = _stdlib_root()
        for rel in _stdlib_files(root):
            text = read_text(root / rel, rel, self._skip)
            if text is not None:
                yield Document(rel, text)



def as_corpus(spec: Corpus | str | os.PathLike | Sequence[str] | None, **kwargs: Any) -> Corpus:
    """Coerce what a user passes as a corpus into a `Corpus`.

    Args:
        spec: a `Corpus`; None or "default"; a path or "hf:NAME"; or a list of texts.
        **kwargs: `Corpus` fields (text_field, split, ...) for specs that are not a `Corpus`.
    """
    if isinstance(spec, Corpus):
        return spec
    if spec is None:
        return Corpus(**kwargs)
    if isinstance(spec, (str, os.PathLike)):
        return Corpus(source=os.fspath(spec), **kwargs)
    if isinstance(spec, Sequence) and all(isinstance(t, str) for t in spec):
        return Corpus.from_texts(spec, **kwargs)
    raise CorpusError(f"cannot use {type(spec).__name__} as a corpus; give a path or texts")


def is_heldout(key: str) -> bool:
    """Whether a document belongs to the held-out split (stable across machines and runs)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[str]:
    """Relative paths of the standard library's .py files, sorted, tests and packages skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        found.extend((rel_dir / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(found)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with no special tokens (HF tokenizers and simple duck types)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def special_token_ids(tokenizer: Any) -> torch.Tensor:
    """int64 ids of the tokenizer's BOS, EOS and padding tokens (the positions every statistic,
    capture and evaluation leaves out: SAEs were never trained on them)."""
    ids = {getattr(tokenizer, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return torch.tensor(sorted(int(i) for i in ids if i is not None), dtype=torch.long)


def bos_token_id(tokenizer: Any) -> int:
    """The tokenizer's BOS id; raises `CorpusError` when it has none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise CorpusError("the tokenizer has no BOS token; scope windows always start with BOS")
    return int(bos)


def token_windows(
    corpus: Corpus | str | Sequence[str] | None,
    tokenizer: Any,
    ctx: int = 128,
    max_tokens: int | None = None,
    shard: tuple[int, int] = (0, 1),
    batch_size: int | None = None,
    start: int = 0,
) -> Iterator[torch.Tensor]:
    """Token windows of a corpus: `[pos=ctx]` each, or `[batch, pos]` when `batch_size` is set.

    Args:
        corpus: a `Corpus` or anything `as_corpus` accepts.
        tokenizer: has `encode(text, add_special_tokens=False)` and `bos_token_id`.
        ctx: window length including BOS (>= 2).
        max_tokens: budget of window tokens over all shards, rounded up to whole windows.
        shard: `(i, n)`: keep windows whose global index `g % n == i`.
        batch_size: group windows into `[batch, pos]` tensors (the last may be smaller).
        start: skip this shard's first `start` windows (resuming).

    Returns:
        An iterator of int64 tensors. `iter_windows` gives the same with global indices.
    """
    if batch_size is None:
        for w in iter_windows(corpus, tokenizer, ctx, max_tokens, shard, start):
            yield w.tokens
        return
    for _, batch in iter_batches(corpus, tokenizer, ctx, batch_size, max_tokens, shard, start):
        yield batch


def iter_windows(
    corpus: Corpus | str | Sequence[str] | None,
    tokenizer: Any,
    ctx: int = 128,
    max_tokens: int | None = None,
    shard: tuple[int, int] = (0, 1),
    start: int = 0,
    block: int = 1,
) -> Iterator[Window]:
    """Like `token_windows` without batching, yielding `Window(index, tokens [pos])`.

    `block` groups consecutive windows for sharding: window g goes to shard `(g // block) % n`.
    """
    corpus = as_corpus(corpus)
    if ctx < 2:
        raise CorpusError(f"context length {ctx} is too short: windows need BOS + >= 1 token")
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise CorpusError(f"shard {i}/{n} is invalid: need 0 <= i < n")
    max_windows = None if max_tokens is None else max(1, -(-int(max_tokens) // ctx))
    bos = bos_token_id(tokenizer)
    sep = _encode(tokenizer, SEPARATOR)
    body = ctx - 1
    buf: list[int] = []
    g = 0  # global window index
    mine = 0  # windows of this shard so far
    for doc in corpus.documents():
        buf.extend(_encode(tokenizer, doc.text))
        buf.extend(sep)
        pos = 0
        while len(buf) - pos >= body:
            if max_windows is not None and g >= max_windows:
                return
            if (g // block) % n == i:
                if mine >= start:
                    chunk = buf[pos : pos + body]
                    yield Window(g, torch.tensor([bos, *chunk], dtype=torch.long))
                mine += 1
            pos += body
            g += 1
        del buf[:pos]
    if g == 0:
        raise CorpusError(
            f"corpus {corpus.source!r} has fewer than {body} tokens: too short for one window of "
            f"--ctx {ctx}; give more text or a shorter context"
        )


def iter_batches(
    corpus: Corpus | str | Sequence[str] | None,
    tokenizer: Any,
    ctx: int = 128,
    batch_size: int = 32,
    max_tokens: int | None = None,
    shard: tuple[int, int] = (0, 1),
    start: int = 0,
    block: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of windows: yields `(indices [batch], tokens [batch, pos])`.

    With `block=batch_size` (and `start` a multiple of it) every shard's batches are the very
    batches a single run makes.
    """
    idx: list[int] = []
    rows: list[torch.Tensor] = []
    for w in iter_windows(corpus, tokenizer, ctx, max_tokens, shard, start, block):
        idx.append(w.index)
        rows.append(w.tokens)
        if len(rows) == batch_size:
            yield torch.tensor(idx, dtype=torch.long), torch.stack(rows)
            idx, rows = [], []
    if rows:
        yield torch.tensor(idx, dtype=torch.long), torch.stack(rows)


def token_strings(tokenizer: Any, vocab_size: int | None = None) -> list[str]:
    """Display strings of every token id, so stores can be read without a tokenizer.

    SentencePiece pieces ("▁the", "<0x0A>") become the text they stand for (" the", "\\n");
    byte-level BPE pieces ("Ġthe") are decoded the same way through `convert_tokens_to_string`.
    """
    n = vocab_size if vocab_size is not None else len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = []
    for i, piece in enumerate(pieces):
        if piece is None:
            out.append(f"<{i}>")
            continue
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            try:
                b = int(piece[3:5], 16)
                out.append(chr(b) if b < 0x80 else piece)
                continue
            except ValueError:
                pass
        out.append(piece.replace("\u2581", " ") if "\u2581" in piece else _bpe_piece(tokenizer, piece))
    return out


def _bpe_piece(tokenizer: Any, piece: str) -> str:
    if "\u0120" in piece or "\u010a" in piece:  # GPT-2 byte-level markers for space/newline
        try:
            return tokenizer.convert_tokens_to_string([piece])
        except Exception:  # noqa: BLE001 - fall back to the raw piece
            return piece
    return piece
