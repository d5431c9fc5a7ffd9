"""Import Neuronpedia's explanations into a store's labels file.

What Neuronpedia ships today: its public datasets hold `explanations/batch-N.jsonl.gz`, one
JSON object per line (`id`, `modelId`, `layer` as the source id such as
`20-gemmascope-res-16k`, `index` as a string, `description`, `typeName`, `explanationModelName`,
...). Also read: the same as plain `.jsonl`, and the JSON list (or `{"explanations": [...]}`) of
the old export endpoint. `import_explanations` takes a file, a folder (its `batch-*` / `*.jsonl*`
/ `*.json` files) or a glob, validates every row before writing anything, matches rows to the
store's SAEs by Neuronpedia id (`modelId/layer`), and then writes once, under the store's lock.

Rules: a row whose `index` is not an integer (3.7, true, "5.9") or lacks a field is an error
naming file and row; several explanations of one feature keep the best-scored one (scored before
unscored, then the higher score; the first in file order on a tie) and the report counts the
dropped ones; an explanation already in the store that carries a score is kept unless
`replace_scored`.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import logging
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from scope.errors import ExplanationImportError
from scope.explore.writing import save_explanations
from scope.store import labels as L

log = logging.getLogger(__name__)

#: largest file read (an explanation batch of 1,024 rows is well under 1 MB)
MAX_FILE_BYTES = 1 << 30
#: longest line of a JSONL file
MAX_LINE_BYTES = 1 << 20
REQUIRED = ("modelId", "layer", "index", "description")
_PATTERNS = ("batch-*.jsonl.gz", "*.jsonl.gz", "*.jsonl", "*.json")


@dataclass
class ImportReport:
    """What `import_explanations` did: counts per SAE and what it left out."""

    imported: dict[str, int] = field(default_factory=dict)
    unmatched_sources: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    kept_scored: int = 0
    out_of_range: int = 0
    files: list[str] = field(default_factory=list)
    rows: int = 0

    @property
    def skipped(self) -> int:
        """Rows left out for an index past the SAE's width."""
        return self.out_of_range


def _source_id(npid: str) -> tuple[str, str] | None:
    """`gemma-2-2b/20-gemmascope-res-16k` -> ("gemma-2-2b", "20-gemmascope-res-16k")."""
    parts = str(npid).strip("/").split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


def _natural(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def resolve_files(source: str | os.PathLike) -> list[Path]:
    """The files `source` names: itself, a folder's explanation files, or a glob's matches."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = {p for pat in _PATTERNS for p in path.glob(pat)}
        if not found and (path / "explanations").is_dir():
            return resolve_files(path / "explanations")
        files = sorted(found, key=_natural)
        if not files:
            raise ExplanationImportError(f"{path} holds no explanation files ({', '.join(_PATTERNS)})")
        return files
    if os.path.lexists(text):
        return [path]
    if any(c in text for c in "*?["):
        files = sorted((Path(p) for p in globlib.glob(text)), key=_natural)
        if not files:
            raise ExplanationImportError(f"{text}: the pattern matches no file")
        return files
    raise ExplanationImportError(f"{text} does not exist; pass a Neuronpedia explanation file "
                                 "(batch-N.jsonl.gz, .jsonl, .json), a folder of them or a glob")


def _check_regular(path: Path) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise ExplanationImportError(f"{path} cannot be read ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "not a regular file")
        raise ExplanationImportError(f"{path} is {kind}; pass a regular explanation file")
    if st.st_size > MAX_FILE_BYTES:
        raise ExplanationImportError(f"{path} is {st.st_size:,} bytes, over the "
                                     f"{MAX_FILE_BYTES:,}-byte limit; split it")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_rows(path: Path):
    """Yield `(row number, object)` of one file (1-based lines of JSONL; items of a JSON list)."""
    _check_regular(path)
    gz = _is_gzip(path)
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            first = fh.read(1)
            while first in (b" ", b"\n", b"\r", b"\t"):
                first = fh.read(1)
            if first == b"[" or (first == b"{" and not path.name.endswith((".jsonl", ".jsonl.gz"))
                                 and _whole_json(path, gz)):
                yield from _json_list(path, gz)
                return
            line_no, pending = 0, first
            while True:
                line = pending + fh.readline(MAX_LINE_BYTES + 1)
                pending = b""
                if not line:
                    return
                line_no += 1
                if len(line) > MAX_LINE_BYTES:
                    raise ExplanationImportError(f"{path}, row {line_no}: a line over "
                                                 f"{MAX_LINE_BYTES:,} bytes; not an explanation")
                if not line.strip():
                    continue
                yield line_no, _loads(line, path, line_no)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ExplanationImportError(f"{path} is a truncated or corrupt gzip file ({exc}); "
                                     "download it again") from None
    except OSError as exc:
        raise ExplanationImportError(f"{path} cannot be read ({exc})") from None


def _loads(data: bytes, path: Path, row: int | None):
    where = f"{path}, row {row}" if row is not None else str(path)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ExplanationImportError(f"{where}: not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise ExplanationImportError(f"{where}: JSON nested too deeply; not an explanation "
                                     "export") from None
    except json.JSONDecodeError as exc:
        raise ExplanationImportError(f"{where}: not JSON ({exc.msg} at column {exc.colno}); "
                                     "pass Neuronpedia's explanation export") from None


def _whole_json(path: Path, gz: bool) -> bool:
    """True when a file that starts with `{` is one JSON document (the old `{"explanations":
    [...]}` export, perhaps pretty-printed) rather than JSON lines."""
    with (gzip.open if gz else open)(path, "rb") as fh:
        first = fh.readline(MAX_LINE_BYTES + 1)
    try:
        doc = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return True
    return isinstance(doc, dict) and isinstance(doc.get("explanations"), list)


def _json_list(path: Path, gz: bool):
    with (gzip.open if gz else open)(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    doc = _loads(data, path, None)
    if isinstance(doc, dict) and isinstance(doc.get("explanations"), list):
        doc = doc["explanations"]
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise ExplanationImportError(f"{path}: expected explanations (JSON lines or a list), "
                                     f"got {type(doc).__name__}")
    yield from enumerate(doc, start=1)


def _index(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ExplanationImportError(f"{where}: index {value!r} is not an integer; fix the row "
                                     "or the file")
    if isinstance(value, str):
        if not re.fullmatch(r"\d+", value.strip()):
            raise ExplanationImportError(f"{where}: index {value!r} is not an integer")
        return int(value.strip())
    if value < 0:
        raise ExplanationImportError(f"{where}: index {value} is negative")
    return value


def _score(entry: dict) -> float | None:
    """A score in [0, 1] if the entry carries one (`scores` list of numbers/objects, `score`)."""
    cand = entry.get("score")
    scores = entry.get("scores")
    if cand is None and isinstance(scores, list) and scores:
        first = scores[0]
        cand = first.get("value") if isinstance(first, dict) else first
    value = L._finite(cand)
    return value if value is not None and 0.0 <= value <= 1.0 else None


def parse_row(obj, where: str) -> tuple[tuple[str, str], int, L.Explanation]:
    """`((modelId, layer), index, Explanation)` of one row; a named error naming `where`."""
    if not isinstance(obj, dict):
        raise ExplanationImportError(f"{where}: a {type(obj).__name__}, not an explanation "
                                     "object")
    missing = [k for k in REQUIRED if obj.get(k) is None]
    if missing:
        raise ExplanationImportError(f"{where}: missing {', '.join(missing)} (an explanation "
                                     f"needs {', '.join(REQUIRED)})")
    text = obj["description"]
    if not isinstance(text, str) or not text.strip():
        raise ExplanationImportError(f"{where}: description is empty or not text")
    index = _index(obj["index"], where)
    model = str(obj.get("explanationModelName") or obj.get("typeName") or "unknown")
    exp = L.Explanation(text=text.strip(), score=_score(obj), explainer=f"neuronpedia:{model}",
                        source="neuronpedia")
    return (str(obj["modelId"]), str(obj["layer"])), index, exp


def _sources(store, neuronpedia_id: str | None, sae: str | None) -> dict[tuple[str, str], str]:
    """{(modelId, layer): SAE name}: each SAE's own Neuronpedia id, and `neuronpedia_id`
    (the source a batch belongs to) for `sae` (default: the store's only SAE)."""
    by_source = {}
    for name in store.sae_names:
        sid = _source_id(store.sae_info(name).get("neuronpedia_id") or "")
        if sid:
            by_source[sid] = name
    if neuronpedia_id is None:
        if sae is not None:
            raise ExplanationImportError(f"--sae {sae}: give --neuronpedia-id MODEL/SOURCE "
                                         "too (the Neuronpedia source whose explanations go "
                                         "to that SAE)")
        return by_source
    sid = _source_id(neuronpedia_id)
    if sid is None:
        raise ExplanationImportError(f"--neuronpedia-id {neuronpedia_id!r}: give the "
                                     "Neuronpedia model and source as MODEL/SOURCE, e.g. "
                                     "gemma-2-2b/20-gemmascope-res-16k (a row's modelId/layer)")
    if sae is None:
        if len(store.sae_names) != 1:
            raise ExplanationImportError(
                f"--neuronpedia-id {neuronpedia_id}: store {store.path} has "
                f"{len(store.sae_names)} SAEs; add --sae with one of "
                f"{', '.join(store.sae_names)}")
        sae = store.sae_names[0]
    store.sae_info(sae)  # unknown name: a StoreError with suggestions
    by_source[sid] = sae
    return by_source


def _no_match(store, files, report, by_source) -> ExplanationImportError:
    have = ", ".join("/".join(k) for k in by_source) or "none"
    got = sorted(report.unmatched_sources, key=lambda k: -report.unmatched_sources[k])
    where = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
    bare = [n for n in store.sae_names if not _source_id(
        store.sae_info(n).get("neuronpedia_id") or "")]
    fix = "Is it an export for another model?"
    if bare and got:
        fix = (f"SAE {bare[0]} has no Neuronpedia id; if the batch holds its explanations, "
               f"pass --neuronpedia-id {got[0]}" + (f" --sae {bare[0]}" if len(
                   store.sae_names) > 1 else "") + " (Python: neuronpedia_id=..., sae=...)")
    return ExplanationImportError(
        f"{where}: no explanation matches an SAE of store {store.path} ({report.rows} rows; "
        f"out of range: {report.out_of_range}); the file's sources: {', '.join(got) or 'none'}; "
        f"the store's Neuronpedia ids: {have}. {fix}")


def import_explanations(source: str | os.PathLike, store, *, replace_scored: bool = False,
                        wait: float = 60.0, neuronpedia_id: str | None = None,
                        sae: str | None = None) -> ImportReport:
    """Import Neuronpedia explanations (file, folder or glob) into the store's labels file.

    Args:
        source: a `batch-N.jsonl.gz` / `.jsonl` / JSON list file, a folder of them, or a glob.
        store: an open store; SAEs are matched by their Neuronpedia id (`modelId/layer`).
        replace_scored: replace explanations in the store that carry a score (default: keep).
        wait: seconds to wait for the store's lock.
        neuronpedia_id: `MODEL/SOURCE` (a row's `modelId/layer`) whose rows go to `sae`: for an
            SAE the store knows no Neuronpedia id of (the demo's), or another source.
        sae: the store's SAE those rows belong to (default: its only SAE).

    Returns:
        An `ImportReport`. Raises `ExplanationImportError` (naming the file and row) for any
        unreadable file or bad row, and when no row matches an SAE of the store; nothing is
        written then.
    """
    by_source = _sources(store, neuronpedia_id, sae)
    files = resolve_files(source)
    report = ImportReport(files=[str(f) for f in files])
    found: dict[str, dict[int, L.Explanation]] = {}
    for path in files:
        for row, obj in read_rows(path):
            report.rows += 1
            key, index, exp = parse_row(obj, f"{path}, row {row}")
            name = by_source.get(key)
            if name is None:
                src = "/".join(key)
                report.unmatched_sources[src] = report.unmatched_sources.get(src, 0) + 1
                continue
            if index >= store.n_features(name):
                report.out_of_range += 1
                continue
            have = found.setdefault(name, {})
            if index in have:
                report.duplicates_dropped += 1
                if not L.better(exp, have[index]):
                    continue
            have[index] = exp
    if not found:
        raise _no_match(store, files, report, by_source)
    merged = save_explanations(store.path, found, replace_scored=replace_scored, wait=wait)
    for name, m in merged.items():
        report.imported[name] = m.added + m.replaced
        report.kept_scored += m.kept_scored
    return report
