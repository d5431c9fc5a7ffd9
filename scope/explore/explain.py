"""Automated interpretability: an explainer model names each feature, a judge scores the name.

For each feature, the explainer reads some of its kept contexts (the top ones and samples from
every activation quantile, the tokens where it fires marked `<<like this>>`) and writes a
one-line explanation. The judge then scores it with delphi's protocol (`scope.explore.sampling`,
`scope.explore.scoring`): detection on held-out activating contexts and corpus contexts verified
not to fire, and fuzzing; each score is a pooled balanced accuracy with a 95% interval, stored
with the protocol's parameters and what it rests on (held-out positives, verified negatives).

Every explanation is saved the moment it is scored (`scope.explore.writing`: under the store's
lock, merged with what is on disk), so a killed run keeps every answer it received, and other
writers (a second explain run, an import) lose nothing. A rerun skips features already explained
by the same model, prompt and protocol. Models: `scope.explore.chat` (an OpenAI-compatible
endpoint through a careful HTTP client, or a local transformers model).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scope.errors import (
    ConfigError,
    EndpointAnswerError,
    ExplainError,
    StoreError,
    StoreLockedError,
)
from scope.explore import sampling as Smp
from scope.explore import scoring as Sc
from scope.explore.chat import ChatEndpoint, ChatModel, LocalChatModel, check_endpoint
from scope.explore.writing import save_explanations
from scope.store import labels as L

__all__ = ["ChatEndpoint", "ChatModel", "ExplainConfig", "ExplainError", "LocalChatModel",
           "check_endpoint", "explain_feature", "explain_store"]

log = logging.getLogger(__name__)

PROMPT_VERSION = "scope-explain-v2"
MAX_EXPLANATION_CHARS = 200
#: consecutive features whose answers were unreadable before a run gives up
MAX_CONSECUTIVE_BAD = 3
NO_EXPLANATION = "the explainer gave no usable explanation"

EXPLAIN_SYSTEM = (
    "You are studying a feature of a neural language model. You see text excerpts in which the "
    "feature activates; the tokens where it fires are marked <<like this>>. Say in one short "
    "phrase what the feature detects (a token, a concept, a syntactic role...). Answer with "
    "one line that starts with 'Explanation:'."
)


def context_text(example, *, marked: bool) -> str:
    """A context cropped around its peak; with `marked`, firing tokens are wrapped in << >>."""
    toks, acts = Smp.crop(example)
    if not marked:
        return "".join(Smp.show(t) for t in toks).strip()
    return "".join(f"<<{Smp.show(t)}>>" if a > 0 else Smp.show(t)
                   for t, a in zip(toks, acts, strict=True)).strip()


def explain_messages(examples: Sequence) -> list[dict[str, str]]:
    """The explainer's prompt: numbered marked contexts."""
    body = "\n".join(f"{i + 1}. {context_text(e, marked=True)}" for i, e in enumerate(examples))
    return [{"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": f"Excerpts:\n{body}\n\nWhat does the feature detect?"}]


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


parse_judgement = Sc.parse_judgement
balanced_accuracy = Sc.balanced_accuracy


@dataclass(frozen=True)
class ExplainConfig:
    """How many contexts the explainer sees and how explanations are scored."""

    n_explain: int = 12
    """contexts shown to the explainer (half the strongest, half spread over the rest)"""
    seed: int = 0
    """every random choice (per feature, so a resumed run draws the same)"""
    retries: int = 1
    """extra attempts when an answer cannot be parsed"""
    scoring: Smp.ScoringConfig = field(default_factory=Smp.ScoringConfig)
    """the scoring protocol (stored with every score)"""


@dataclass
class Outcome:
    """One feature's result: an explanation, or why there is none."""

    explanation: L.Explanation | None = None
    skip_reason: str | None = None


def explain_feature(feat, explainer: ChatModel, judge: ChatModel, negatives: Smp.NegativePool,
                    cfg: ExplainConfig) -> Outcome:
    """Explain and score one feature (delphi's protocol); see the module docstring."""
    sc = cfg.scoring
    rng = random.Random(f"{cfg.seed}-{feat.index}")
    pool = Smp.positives_pool(feat)
    if len(pool) < sc.min_examples:
        return Outcome(skip_reason=f"{len(pool)} kept activating contexts, fewer than "
                                   f"min_examples={sc.min_examples}")
    shown, held = Smp.split_positives(pool, sc, cfg.n_explain, rng)
    text = None
    for _ in range(cfg.retries + 1):
        text = parse_explanation(explainer.complete(explain_messages(shown)))
        if text is not None:
            break
    if text is None:
        log.warning("feature %s: %s", feat.index, NO_EXPLANATION)
        return Outcome(skip_reason=NO_EXPLANATION)
    known = {e.window for e in pool}
    neg = negatives.negatives(int(feat.index), known, rng)
    hard = negatives.hard_negatives(feat, known | {c.window for c in neg}, rng)
    counts = {"positives": len(held), "negatives": len(neg), "hard_negatives": len(hard),
              "explain_windows": sorted(e.window for e in shown),
              "positive_windows": sorted(e.window for e, _ in held),
              "negative_windows": sorted(c.window for c in neg + hard)}
    score = ci = fuzz = None
    if neg or hard:
        items = [(Smp.plain_text(e), 1) for e, _ in held] + [(Smp.plain_text(c), 0)
                                                             for c in neg + hard]
        det = Sc.run_classifier(judge, "detection", text, items, sc.per_prompt, rng, cfg.retries)
        counts["detection"] = det.to_json()
        score, ci = det.balanced_accuracy, det.interval()
        if sc.fuzz:
            n_inc = Smp.n_marked([e for e, _ in held], sc.fuzz_threshold)
            fitems = ([(Smp.fuzz_text(e, sc.fuzz_threshold, 0, rng), 1) for e, _ in held]
                      + [(Smp.fuzz_text(c, sc.fuzz_threshold, n_inc, rng), 0)
                         for c in neg + hard])
            fz = Sc.run_classifier(judge, "fuzz", text, fitems, sc.per_prompt, rng, cfg.retries)
            counts["fuzz"] = fz.to_json()
            fuzz = fz.balanced_accuracy
    else:
        counts["unscored"] = "no verified non-activating context (the feature fires on every " \
                             "candidate window)"
    exp = L.Explanation(text=text, score=None if score is None else round(score, 4),
                        explainer=explainer.name, prompt_version=PROMPT_VERSION,
                        source="explain",
                        score_ci=None if ci is None else (round(ci[0], 4), round(ci[1], 4)),
                        fuzz_score=None if fuzz is None else round(fuzz, 4),
                        protocol=sc.protocol(cfg.seed), counts=counts)
    return Outcome(explanation=exp)


def _todo(store, sae: str, features, explainer: ChatModel, force: bool) -> tuple[list, dict]:
    n = store.n_features(sae)
    counts = np.asarray(store.firing_counts(sae))
    if features is None:
        todo = [int(i) for i in np.flatnonzero(counts > 0)]
    else:
        todo = []
        for i in features:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise ConfigError(f"feature {i!r} is not an integer index")
            if not 0 <= int(i) < n:
                raise StoreError(f"feature {int(i)} is out of range for {sae!r} (d_sae={n})")
            todo.append(int(i))
        if not todo:
            raise ConfigError("no feature to explain: the feature list is empty (a range such "
                              "as 5-3 runs backwards?)")
    done = L.labels_for(store.path).for_sae(sae)
    skipped = {"done": 0, "scored_by_other": 0}
    keep = []
    for i in dict.fromkeys(todo):
        e = done.get(i)
        if e is not None and not force:
            if (e.source, e.explainer, e.prompt_version) == ("explain", explainer.name,
                                                               PROMPT_VERSION):
                skipped["done"] += 1
                continue
            if e.scored:
                skipped["scored_by_other"] += 1
                continue
        keep.append(i)
    return keep, skipped


def _flush(path, sae: str, pending: dict, force: bool, wait: float, final: bool = False) -> None:
    """Save the explanations not yet saved; a busy lock keeps them for the next try (only the
    final try raises, naming how many answers could not be saved)."""
    try:
        save_explanations(path, {sae: dict(pending)}, replace_scored=force, wait=wait)
        pending.clear()
    except StoreLockedError as exc:
        if final:
            raise StoreLockedError(f"{exc} ({len(pending)} explanations could not be saved: "
                                   f"features {sorted(pending)[:10]})") from None
        log.warning("%s; keeping %d explanations to save with the next one", exc, len(pending))


def explain_store(store, sae: str, explainer: ChatModel, judge: ChatModel | None = None, *,
                  features: Sequence[int] | None = None, cfg: ExplainConfig | None = None,
                  force: bool = False, encoder=None, progress: bool = True,
                  lock_wait: float = 60.0) -> dict:
    """Explain and score features of one SAE, saving each explanation as it arrives.

    Args:
        store: an open store.
        sae: the SAE's name in the store.
        explainer: the model that writes explanations; `judge` scores them (default: same).
        features: which features (default: every feature that fired).
        cfg: context counts, seed and the scoring protocol.
        force: redo features already explained (and replace scored explanations of others).
        encoder: what verifies negatives (`replay.WindowEncoder`); default: the store's model
            and SAE, loaded from its manifest (unless `cfg.scoring.verify` is False).
        progress: show a progress bar.
        lock_wait: seconds to wait for the store's lock at each save.

    Returns:
        {"explained", "skipped" (already done), "skipped_scored_by_other", "skipped_reasons"
        ({feature: why}), "failed", "errors" ({feature: message}), "mean_score",
        "mean_fuzz_score"}
    """
    from tqdm.auto import tqdm

    cfg = cfg or ExplainConfig()
    judge = judge or explainer
    todo, skipped = _todo(store, sae, features, explainer, force)
    stats = {"explained": 0, "skipped": skipped["done"],
             "skipped_scored_by_other": skipped["scored_by_other"], "skipped_reasons": {},
             "failed": 0, "errors": {}}
    scores, fuzz = [], []
    if todo and cfg.scoring.verify and encoder is None:
        from scope.explore.replay import WindowEncoder

        encoder = WindowEncoder.for_store(store, sae)
    negatives = Smp.NegativePool(store, sae, encoder if cfg.scoring.verify else None,
                                 cfg.scoring, cfg.seed) if todo else None
    bad_in_a_row = 0
    pending: dict[int, L.Explanation] = {}
    bar = tqdm(total=len(todo), desc=f"explain {sae}", unit="feature", disable=not progress)
    try:
        for i in todo:
            try:
                got = explain_feature(store.feature(sae, i), explainer, judge, negatives, cfg)
            except EndpointAnswerError as exc:
                stats["failed"] += 1
                stats["errors"][i] = str(exc)
                log.warning("feature %s: %s", i, exc)
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_CONSECUTIVE_BAD:
                    raise EndpointAnswerError(f"{exc} (and for the {bad_in_a_row - 1} features "
                                              "before it); stopping") from None
                continue
            bad_in_a_row = 0
            exp = got.explanation
            if exp is None:
                if got.skip_reason == NO_EXPLANATION:
                    stats["failed"] += 1
                else:
                    stats["skipped_reasons"][i] = got.skip_reason
                bar.update(1)
                continue
            pending[i] = exp
            _flush(store.path, sae, pending, force, lock_wait)
            stats["explained"] += 1
            if exp.score is not None:
                scores.append(exp.score)
            if exp.fuzz_score is not None:
                fuzz.append(exp.fuzz_score)
            bar.update(1)
    finally:
        bar.close()
        if pending:  # the lock was busy at the last saves: wait longer, then say what is unsaved
            _flush(store.path, sae, pending, force, max(lock_wait, 300.0), final=True)
    stats["mean_score"] = float(np.mean(scores)) if scores else None
    stats["mean_fuzz_score"] = float(np.mean(fuzz)) if fuzz else None
    return stats
