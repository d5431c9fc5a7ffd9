"""Automated interpretability: an explainer model names each feature, a judge scores the name.

For each feature, the explainer reads its top contexts and contexts sampled from each activation
band, with the tokens where the feature fires marked `<<like this>>`, and writes a one-line
explanation. The scorer then runs detection: the judge sees the explanation and a shuffled mix
of held-out activating contexts and contexts from elsewhere in the corpus (unmarked) and says
which ones activate; the score is the balanced accuracy of its answers (0.5 is chance, 1.0
perfect). Explanations, scores, the explainer's name and the prompt version go into the store's
`labels.json`; a rerun skips the features already explained with the same model and prompt.

Models: any OpenAI-compatible chat endpoint (`ChatEndpoint`: vLLM, llama.cpp server, Ollama,
OpenAI) or a local transformers model directory (`LocalChatModel`). Small explainers write
weak explanations; the score says how weak.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scope.errors import ScopeError
from scope.store import labels as L

log = logging.getLogger(__name__)

PROMPT_VERSION = "scope-explain-v1"
MARK_OPEN, MARK_CLOSE = "<<", ">>"
MAX_EXPLANATION_CHARS = 200

EXPLAIN_SYSTEM = (
    "You are studying a feature of a neural language model. You see text excerpts in which the "
    "feature activates; the tokens where it fires are marked <<like this>>. Say in one short "
    "phrase what the feature detects (a token, a concept, a syntactic role...). Answer with "
    "one line that starts with 'Explanation:'."
)
SCORE_SYSTEM = (
    "You check an explanation of a neural language model feature. You get the explanation and "
    "numbered text excerpts. For each excerpt decide whether the feature would activate on it. "
    "Answer with a JSON list of 0/1 values, one per excerpt in order, and nothing else, e.g. "
    "[1, 0, 0, 1]."
)


class ExplainError(ScopeError, RuntimeError):
    """The explainer or judge model cannot be reached or keeps answering nonsense."""


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[dict[str, str]]) -> str: ...


@dataclass
class ChatEndpoint:
    """An OpenAI-compatible `/chat/completions` endpoint (API key from $OPENAI_API_KEY)."""

    endpoint: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_tokens: int = 120

    @property
    def name(self) -> str:
        return self.model

    def complete(self, messages: list[dict[str, str]]) -> str:
        url = self.endpoint.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise ExplainError(f"{url} answered HTTP {exc.code}: {exc.reason}; check --endpoint, "
                               "--model and $OPENAI_API_KEY") from exc
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise ExplainError(f"cannot reach a chat endpoint at {url} ({exc}); start the "
                               "server (vLLM, llama.cpp, Ollama) or fix --endpoint") from exc
        try:
            return str(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as exc:
            raise ExplainError(f"{url} did not answer in the chat-completions format") from exc


class LocalChatModel:
    """A local transformers chat model directory (greedy decoding)."""

    def __init__(self, path: str, max_new_tokens: int = 120) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = os.path.basename(os.path.normpath(path))
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# prompts and parsing
# ---------------------------------------------------------------------------------------------


def context_text(example, *, marked: bool, left: int = 24, right: int = 8) -> str:
    """A context cropped around its peak; with `marked`, firing tokens are wrapped in << >>."""
    p = int(example.max_position)
    lo, hi = max(0, p - left), min(len(example.tokens), p + right + 1)
    parts = []
    for tok, act in zip(example.tokens[lo:hi], example.activations[lo:hi], strict=True):
        tok = tok.replace("\n", "↵")
        parts.append(f"{MARK_OPEN}{tok}{MARK_CLOSE}" if marked and act > 0 else tok)
    return "".join(parts).strip()


def explain_messages(examples: Sequence) -> list[dict[str, str]]:
    """The explainer's prompt: numbered marked contexts."""
    body = "\n".join(f"{i + 1}. {context_text(e, marked=True)}" for i, e in enumerate(examples))
    return [{"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": f"Excerpts:\n{body}\n\nWhat does the feature detect?"}]


def score_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """The judge's prompt: the explanation and numbered unmarked excerpts."""
    body = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
    return [{"role": "system", "content": SCORE_SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\n\nExcerpts:\n{body}\n\n"
             f"Answer with a JSON list of {len(texts)} values (0 or 1)."}]


def parse_explanation(answer: str) -> str | None:
    """The explanation in an answer, or None when there is none."""
    text = (answer or "").strip()
    m = re.search(r"explanation\s*:\s*(.+)", text, flags=re.IGNORECASE)
    if m:
        text = m.group(1)
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = line.strip().strip("\"'`*").strip()
    if not line or len(line) < 2:
        return None
    return line[:MAX_EXPLANATION_CHARS]


def parse_judgement(answer: str, n: int) -> list[int] | None:
    """The judge's 0/1 list, or None when the answer is not a list of exactly `n` 0/1 values."""
    m = re.search(r"\[[^\[\]]*\]", answer or "")
    if not m:
        return None
    try:
        values = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(values, list) or len(values) != n:
        return None
    out = []
    for v in values:
        if v in (0, 1, True, False) or v in ("0", "1"):
            out.append(int(v))
        else:
            return None
    return out


def balanced_accuracy(truth: Sequence[int], guess: Sequence[int]) -> float:
    """Mean of the true-positive and true-negative rates (0.5 is chance)."""
    t, g = np.asarray(truth, dtype=bool), np.asarray(guess, dtype=bool)
    rates = [float((g[t]).mean()) if t.any() else None, float((~g[~t]).mean()) if (~t).any()
             else None]
    rates = [r for r in rates if r is not None]
    return float(np.mean(rates)) if rates else float("nan")


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainConfig:
    """How many contexts each step sees."""

    n_explain: int = 12
    """contexts shown to the explainer: the top ones, then band samples (half each when both)"""
    n_score: int = 6
    """held-out activating contexts and as many non-activating ones shown to the judge"""
    seed: int = 0
    """shuffling and choice of non-activating contexts"""
    retries: int = 1
    """extra attempts when an answer cannot be parsed"""


def _split_examples(feat, cfg: ExplainConfig) -> tuple[list, list]:
    """(contexts to explain from, held-out activating contexts to score with)."""
    top = list(feat.top_examples)
    band = [e for b in (feat.band_examples or []) for e in b.examples]
    half = cfg.n_explain // 2 if band else cfg.n_explain
    explain = top[:half]
    held = top[half:] + band[1::2]
    explain += band[0::2][: cfg.n_explain - len(explain)]
    if not held:  # too few contexts: score with the last explained ones rather than none
        held = explain[len(explain) // 2:]
    return explain, held[: cfg.n_score]


def _ask(model: ChatModel, messages, parse, retries: int):
    for _ in range(retries + 1):
        got = parse(model.complete(messages))
        if got is not None:
            return got
    return None


def explain_feature(feat, explainer: ChatModel, judge: ChatModel, negatives: Sequence[str],
                    cfg: ExplainConfig, rng: random.Random) -> L.Explanation | None:
    """Explain and score one feature; None when the explainer gives no usable answer."""
    explain, held = _split_examples(feat, cfg)
    if not explain:
        return None
    text = _ask(explainer, explain_messages(explain), parse_explanation, cfg.retries)
    if text is None:
        log.warning("feature %s: the explainer gave no usable explanation", feat.index)
        return None
    known = list(feat.top_examples) + [e for b in (feat.band_examples or []) for e in b.examples]
    mine = {context_text(e, marked=False) for e in known}  # never offered as a negative
    neg = [t for t in negatives if t not in mine]
    neg = rng.sample(neg, min(len(held), len(neg)))
    items = [(context_text(e, marked=False), 1) for e in held] + [(t, 0) for t in neg]
    rng.shuffle(items)
    score = None
    if items:
        guess = _ask(judge, score_messages(text, [t for t, _ in items]),
                     lambda a: parse_judgement(a, len(items)), cfg.retries)
        if guess is None:
            log.warning("feature %s: the judge's answers could not be read; left unscored",
                        feat.index)
        else:
            score = round(balanced_accuracy([y for _, y in items], guess), 4)
    return L.Explanation(text=text, score=score, explainer=explainer.name,
                         prompt_version=PROMPT_VERSION, source="explain")


def negative_pool(store, sae: str, size: int = 400, seed: int = 0) -> list[str]:
    """Contexts from other features' top examples, to serve as non-activating excerpts."""
    counts = np.asarray(store.firing_counts(sae))
    live = np.flatnonzero(counts > 0)
    rng = np.random.default_rng(seed)
    pick = rng.choice(live, size=min(len(live), max(1, size // 4)), replace=False) if len(live) \
        else []
    out = []
    for i in pick:
        out += [context_text(e, marked=False) for e in store.feature(sae, int(i)).top_examples[:4]]
    return out


def explain_store(store, sae: str, explainer: ChatModel, judge: ChatModel | None = None, *,
                  features: Sequence[int] | None = None, cfg: ExplainConfig | None = None,
                  force: bool = False, save_every: int = 10, progress: bool = True) -> dict:
    """Explain and score features of one SAE, saving into the store's labels file as it goes.

    Args:
        store: an open store.
        sae: the SAE's name in the store.
        explainer: the model that writes explanations; `judge` scores them (default: same).
        features: which features (default: every feature that fired, densest last).
        cfg: context counts and seed.
        force: redo features already explained with this explainer and prompt version.
        save_every: write labels.json after this many features (an interrupted run resumes).
        progress: show a progress bar.

    Returns:
        {"explained": n, "skipped": n (already done), "failed": n, "mean_score": float|None}
    """
    from tqdm.auto import tqdm

    cfg = cfg or ExplainConfig()
    judge = judge or explainer
    counts = np.asarray(store.firing_counts(sae))
    todo = [int(i) for i in (features if features is not None else np.flatnonzero(counts > 0))]
    labels = L.Labels(store.path)
    done = labels.for_sae(sae)

    def finished(i: int) -> bool:
        e = done.get(i)
        return (e is not None and e.source == "explain" and e.explainer == explainer.name
                and e.prompt_version == PROMPT_VERSION)

    skipped = sum(1 for i in todo if finished(i)) if not force else 0
    todo = [i for i in todo if force or not finished(i)]
    negatives = negative_pool(store, sae, seed=cfg.seed) if todo else []
    stats = {"explained": 0, "skipped": skipped, "failed": 0}
    scores, pending = [], {}
    bar = tqdm(total=len(todo), desc=f"explain {sae}", unit="feature", disable=not progress)
    try:
        for i in todo:
            rng = random.Random(f"{cfg.seed}-{i}")  # per feature: a resumed run draws the same
            exp = explain_feature(store.feature(sae, i), explainer, judge, negatives, cfg, rng)
            if exp is None:
                stats["failed"] += 1
            else:
                pending[i] = exp
                stats["explained"] += 1
                if exp.score is not None:
                    scores.append(exp.score)
            if len(pending) >= save_every:
                labels.update(sae, pending)
                labels.save()
                pending = {}
            bar.update(1)
    finally:
        if pending:
            labels.update(sae, pending)
            labels.save()
        bar.close()
    stats["mean_score"] = float(np.mean(scores)) if scores else None
    return stats
