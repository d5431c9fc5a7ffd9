"""The demo's corpus: prose and code, from text every Python installation already holds.

The default corpus (`Corpus("default")`) is the standard library's source, so a store made from
it labels code well and prose badly: the dashboard's default prompts ("Once upon a time", "The
quick brown fox…") then land on features that never fired on anything like them. The demo mixes
in English prose that is also on every machine, offline:

- the docstrings of the standard library's modules, classes and functions (read with `ast`,
  one document per module, only docstrings that read as sentences), and
- prose shipped inside installed packages: the long description in each `*.dist-info/METADATA`
  and `.rst` / `.md` / `.txt` files under site-packages (licences, records and file lists left
  out).

`demo_corpus(tokens)` interleaves prose and code documents one for one, in an order fixed by a
hash of each document's key (so the token budget's prefix covers many modules, not the first
few alphabetically), and reads only as much text as the budget needs. It returns an in-memory
`Corpus` (its manifest description carries the texts' digest, so another machine's packages
make another store, never a silently different one).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import site
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from scope.pipeline.corpus import Corpus, Document, _stdlib_files, _stdlib_root

log = logging.getLogger(__name__)

#: label of the demo corpus in manifests
SOURCE = "demo"
#: characters of text read per budget token (the bundled tokenizer averages ~3.5 on this text)
CHARS_PER_TOKEN = 6
#: longest piece of one document (a long file would otherwise fill many windows alone)
MAX_DOC_CHARS = 3000
#: a docstring counts as prose when it has at least this many words...
MIN_WORDS = 8
#: ...and at least this share of its characters are letters or spaces
MIN_LETTER_SHARE = 0.8
_SKIP_NAMES = ("licen", "copying", "notice", "authors", "record", "sources", "top_level",
               "entry_points", "requires", "dependency_links", "installer", "wheel", "requested")
PROSE_SUFFIXES = (".rst", ".md", ".txt")


def _order(keys: Iterable[str], salt: str = "") -> list[str]:
    """Keys sorted by a hash of their text: deterministic, and mixed across folders (`salt`
    gives another order, so a module's code and its docstrings do not land side by side)."""
    return sorted(keys, key=lambda k: hashlib.sha256((salt + k).encode("utf-8")).hexdigest())


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def is_prose(text: str) -> bool:
    """Whether a docstring reads as sentences (enough words, mostly letters)."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / max(1, len(text)) >= MIN_LETTER_SHARE


def docstrings(source: str) -> list[str]:
    """The prose docstrings of a module's source (module, classes, functions), in file order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and is_prose(doc):
                out.append(doc)
    return out


def _site_roots() -> list[Path]:
    roots = {Path(sysconfig.get_paths()["purelib"])}
    try:
        roots.update(Path(p) for p in site.getsitepackages())
    except AttributeError:  # some virtualenvs
        pass
    return sorted(r for r in roots if r.is_dir())


def _metadata_description(text: str) -> str:
    """The long description of a METADATA file: the body after its header block."""
    _, sep, body = text.partition("\n\n")
    return body.strip() if sep else ""


def package_prose_files() -> list[tuple[str, Path]]:
    """(key, path) of every prose file shipped by an installed package, hash-ordered."""
    found: dict[str, Path] = {}
    for root in _site_roots():
        for path in root.rglob("*"):
            name = path.name.lower()
            if any(s in name for s in _SKIP_NAMES) or not path.is_file():
                continue
            if path.name == "METADATA" or path.suffix.lower() in PROSE_SUFFIXES:
                found.setdefault(f"site:{path.relative_to(root).as_posix()}", path)
    return [(k, found[k]) for k in _order(found)]


def prose_documents() -> Iterator[Document]:
    """Prose documents: stdlib docstrings interleaved with package prose, hash-ordered."""
    root = _stdlib_root()

    def stdlib() -> Iterator[Document]:
        for rel in _order(_stdlib_files(root)):
            text = _read(root / rel)
            docs = docstrings(text) if text else []
            if docs:
                yield Document(f"doc:{rel}", "\n\n".join(docs))

    def packages() -> Iterator[Document]:
        for key, path in package_prose_files():
            text = _read(path)
            if text and path.name == "METADATA":
                text = _metadata_description(text)
            if text and text.strip():
                yield Document(key, text)

    yield from _alternate(stdlib(), packages())


def code_documents() -> Iterator[Document]:
    """The standard library's source files (the default corpus's text), hash-ordered."""
    root = _stdlib_root()
    for rel in _order(_stdlib_files(root), salt="code"):
        text = _read(root / rel)
        if text and text.strip():
            yield Document(rel, text)


def _alternate(*streams: Iterator[Document]) -> Iterator[Document]:
    """One document from each stream in turn, until all are exhausted."""
    live = list(streams)
    while live:
        for s in list(live):
            doc = next(s, None)
            if doc is None:
                live.remove(s)
            else:
                yield doc


def demo_documents(tokens: int | None) -> list[Document]:
    """Prose and code documents alternating, each cut to `MAX_DOC_CHARS`, enough for a budget
    of `tokens` (None: everything)."""
    budget = None if tokens is None else int(tokens) * CHARS_PER_TOKEN
    out, used = [], 0
    for doc in _alternate(prose_documents(), code_documents()):
        text = doc.text.strip()[:MAX_DOC_CHARS]
        out.append(Document(doc.key, text))
        used += len(text)
        if budget is not None and used >= budget:
            break
    n_prose = sum(d.key.startswith(("doc:", "site:")) for d in out)
    log.info("demo corpus: %d documents (%d prose, %d code), %d characters", len(out), n_prose,
             len(out) - n_prose, used)
    return out


def demo_corpus(tokens: int | None) -> Corpus:
    """The demo corpus for a token budget, as an in-memory `Corpus` labelled "demo"."""
    docs = demo_documents(tokens)
    return Corpus(source=SOURCE, texts=tuple(d.text for d in docs))


@functools.lru_cache(maxsize=1)
def _all_texts() -> tuple[str, ...]:
    return tuple(d.text for d in demo_documents(None))


def corpus_for(spec: str, split: str = "train") -> Corpus:
    """The corpus a config's `corpus` spec names, in one split: "demo" is the whole demo corpus
    (every prose document, as many code documents beside them), anything else as `Corpus` reads it.
    """
    if spec == SOURCE:
        return Corpus(source=SOURCE, texts=_all_texts(), split=split)
    return Corpus(source=spec, split=split)
