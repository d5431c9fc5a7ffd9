"""A character-level tokenizer for corpus and extraction tests (no files, no network)."""

from __future__ import annotations


class CharTokenizer:
    """Duck-typed tokenizer: ids 0..3 are special, then one id per byte of UTF-8 text.

    Has the parts of a Hugging Face tokenizer scope uses: `encode`, `bos_token_id`,
    `eos_token_id`, `pad_token_id`, `convert_ids_to_tokens`, `__len__`, `decode`.
    """

    pad_token_id = 0
    bos_token_id = 2
    eos_token_id = 1
    special = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"}

    def __init__(self, vocab_size: int = 260) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [4 + b for b in text.encode("utf-8")]
        ids = [i if i < self.vocab_size else 3 for i in ids]
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def convert_ids_to_tokens(self, ids):
        return [self._piece(int(i)) for i in ids]

    def _piece(self, i: int) -> str:
        if i in self.special:
            return self.special[i]
        return chr(i - 4) if i - 4 < 128 else f"<0x{i - 4:02X}>"

    def decode(self, ids) -> str:
        return "".join(self.convert_ids_to_tokens(list(ids)))


def word_corpus(folder, n_docs: int = 30, words: int = 120, seed: int = 0):
    """Write `n_docs` text files of random words from a 14-word vocabulary into `folder`."""
    import torch

    vocab = "the quick brown fox jumps over a lazy dog while sparse features fire".split()
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n_docs):
        idx = torch.randint(len(vocab), (words,), generator=gen).tolist()
        (folder / f"doc{i}.txt").write_text(" ".join(vocab[j] for j in idx))
    return folder
