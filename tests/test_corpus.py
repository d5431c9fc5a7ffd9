"""corpus.py: sources, windows, sharding, held-out split and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from corpus_helpers import CharTokenizer

from scope.errors import CorpusError
from scope.pipeline.corpus import (
    Corpus,
    as_corpus,
    is_heldout,
    iter_windows,
    token_strings,
    token_windows,
)

TOK = CharTokenizer()


def test_windows_start_with_bos_and_cover_the_stream():
    texts = ["hello world " * 5, "second doc", "x" * 50]
    wins = list(token_windows(texts, TOK, ctx=16))
    assert all(w.shape == (16,) and w[0].item() == TOK.bos_token_id for w in wins)
    stream = []
    for t in texts:
        stream += TOK.encode(t, add_special_tokens=False) + TOK.encode("\n\n", add_special_tokens=False)
    body = torch.cat([w[1:] for w in wins]).tolist()
    assert body == stream[: len(body)] and len(stream) - len(body) < 15


def test_long_document_spans_windows_and_budget_rounds_up():
    wins = list(token_windows(["a" * 1000], TOK, ctx=10, max_tokens=35))
    assert len(wins) == 4
    batches = list(token_windows(["a" * 1000], TOK, ctx=10, max_tokens=35, batch_size=3))
    assert [b.shape for b in batches] == [(3, 10), (1, 10)]


def test_shards_partition_the_windows():
    texts = [f"document number {i} " * 3 for i in range(20)]
    full = [(w.index, w.tokens.tolist()) for w in iter_windows(texts, TOK, ctx=8, max_tokens=200)]
    parts = []
    for i in range(3):
        parts += [(w.index, w.tokens.tolist()) for w in iter_windows(texts, TOK, 8, 200, (i, 3))]
    assert sorted(parts) == full
    resumed = [w.index for w in iter_windows(texts, TOK, 8, 200, (1, 3), start=2)]
    assert resumed == [w.index for w in iter_windows(texts, TOK, 8, 200, (1, 3))][2:]


def test_default_corpus_is_stdlib_and_deterministic():
    a = [w.tokens for w in iter_windows(None, TOK, ctx=64, max_tokens=64 * 5)]
    b = [w.tokens for w in iter_windows("default", TOK, ctx=64, max_tokens=64 * 5)]
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    docs = Corpus().documents()
    first = next(docs)
    assert first.key.endswith(".py") and "site-packages" not in first.key


def test_heldout_split_is_disjoint_and_small():
    keys = [f"pkg/mod{i}.py" for i in range(2000)]
    held = [k for k in keys if is_heldout(k)]
    assert 40 < len(held) < 160
    train = [d.key for d in Corpus.from_texts(["t"] * 200, split="train").documents()]
    heldout = [d.key for d in Corpus.from_texts(["t"] * 200, split="heldout").documents()]
    assert not set(train) & set(heldout) and len(train) + len(heldout) == 200


def test_local_files_and_bad_input(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe not utf8 \xc3")
    (tmp_path / "empty.txt").write_text("")
    lines = [json.dumps({"text": "json doc"}), json.dumps({"other": 1}), "not json", ""]
    (tmp_path / "c.jsonl").write_text("\n".join(lines))
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    corpus = Corpus(str(tmp_path))
    docs = list(corpus.documents())
    assert [d.text for d in docs] == ["plain text file", "json doc"]
    assert corpus.skipped == {"not UTF-8": 1, "empty document": 1, "no text field 'text'": 1,
                              "line is not JSON": 1}


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["one", "two", None]}), tmp_path / "d.parquet")
    corpus = as_corpus(tmp_path / "d.parquet", text_field="body")
    assert [d.text for d in corpus.documents()] == ["one", "two"]
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(Corpus(str(tmp_path / "d.parquet")).documents())


@pytest.mark.parametrize("setup", ["empty_file", "empty_folder", "missing", "too_short"])
def test_unusable_corpora_raise_corpus_error(tmp_path, setup):
    if setup == "empty_file":
        (tmp_path / "e.txt").write_text("  \n")
        src = str(tmp_path / "e.txt")
    elif setup == "empty_folder":
        (tmp_path / "x.bin").write_bytes(b"1")
        src = str(tmp_path)
    elif setup == "missing":
        src = str(tmp_path / "nope")
    else:
        (tmp_path / "s.txt").write_text("hi")
        src = str(tmp_path / "s.txt")
    with pytest.raises(CorpusError):
        list(token_windows(src, TOK, ctx=64))


def test_token_strings():
    strings = token_strings(TOK)
    assert strings[4 + ord("a")] == "a" and strings[4 + 10] == "\n" and strings[2] == "<bos>"


def test_special_token_ids_are_bos_eos_pad_only():
    from types import SimpleNamespace

    from scope.pipeline.corpus import special_token_ids

    tok = SimpleNamespace(bos_token_id=2, eos_token_id=1, pad_token_id=None)
    assert special_token_ids(tok).tolist() == [1, 2]
    assert special_token_ids(SimpleNamespace()).dtype == torch.long
