"""Detection and fuzzing scores of an explanation (delphi's classifier protocol).

The judge gets the explanation and `per_prompt` (5) numbered examples at a time, after three
worked demonstrations (few-shot), and answers a list of 0/1, one per example. Detection shows
plain excerpts: held-out activating ones and verified non-activating ones, shuffled; the judge
says which the feature fires on. Fuzzing shows excerpts with tokens highlighted `<<like this>>`:
activating ones with the tokens where the feature fires, non-activating ones with as many random
tokens; the judge says whether the highlighting fits the explanation. Each score is the balanced
accuracy pooled over every answered example (mean of the true-positive and true-negative
rates); its 95% interval is the normal one with one success and one failure added to each rate
(Agresti-Caffo style, so 0/N and N/N do not collapse to a zero-width interval), clipped to
[0, 1]. Examples whose batch the judge did not answer in the format are counted apart.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

DETECTION_SYSTEM = (
    "You are a careful linguistics researcher. You get the explanation of a feature of a neural "
    "language model (a pattern in text it responds to) and several numbered text examples. For "
    "each example, in order, answer 1 if the feature would activate on it and 0 if not. Answer "
    "with a Python list of 0/1 values and nothing else."
)
FUZZ_SYSTEM = (
    "You are a careful linguistics researcher. You get the explanation of a feature of a neural "
    "language model and several numbered text examples in which some tokens are highlighted "
    "<<like this>>. For each example, in order, answer 1 if the highlighted tokens are ones the "
    "explanation describes and 0 if they are not. Answer with a Python list of 0/1 values and "
    "nothing else."
)
#: worked demonstrations shown before every judge prompt: (explanation, examples, answer)
DETECTION_SHOTS = (
    ("Closing parentheses that end a function call.",
     ["print(len(items))", "the cat sat on the mat", "result = compute(a, b)",
      "She walked home after school.", "os.path.join(root, name)"], "[1, 0, 1, 0, 1]"),
    ("Names of months.",
     ["for i in range(10):", "The bridge opened in 1932.", "a value of zero means off",
      "import numpy as np", "He waited at the station."], "[0, 0, 0, 0, 0]"),
    ("The word 'error' in log messages.",
     ["logger.error('disk full')", "raise an error if empty", "error: file not found",
      "an unexpected error occurred", "errors are reported to stderr"], "[1, 1, 1, 1, 1]"),
)
FUZZ_SHOTS = (
    ("Closing parentheses that end a function call.",
     ["print(len(items<<))>>", "the <<cat>> sat on the mat", "result = compute(a, b<<)>>",
      "She walked <<home>> after school.", "os.path.join(root, name<<)>>"], "[1, 0, 1, 0, 1]"),
    ("Names of months.",
     ["for <<i>> in range(10):", "The <<bridge>> opened in 1932.", "a value of <<zero>> means",
      "import <<numpy>> as np", "He <<waited>> at the station."], "[0, 0, 0, 0, 0]"),
    ("The word 'error' in log messages.",
     ["logger.<<error>>('disk full')", "raise an <<error>> if empty", "<<error>>: not found",
      "an unexpected <<error>> occurred", "<<errors>> are reported"], "[1, 1, 1, 1, 1]"),
)


def _user(explanation: str, texts: Sequence[str]) -> str:
    body = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts))
    return (f"Feature explanation: {explanation}\n\nText examples:\n\n{body}\n\n"
            f"Answer with a list of {len(texts)} values (0 or 1).")


def judge_messages(kind: str, explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """A judge prompt: system, three demonstrations, then the examples to classify."""
    system, shots = (DETECTION_SYSTEM, DETECTION_SHOTS) if kind == "detection" else (
        FUZZ_SYSTEM, FUZZ_SHOTS)
    msgs = [{"role": "system", "content": system}]
    for exp, ex, answer in shots:
        msgs += [{"role": "user", "content": _user(exp, ex)},
                 {"role": "assistant", "content": answer}]
    return msgs + [{"role": "user", "content": _user(explanation, texts)}]


def _bit(v) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    return int(v) if v in ("0", "1") else None


def parse_judgement(answer: str, n: int) -> list[int] | None:
    """The judge's 0/1 list, or None when the answer holds no list of exactly `n` 0/1 values."""
    for m in re.finditer(r"\[[^\[\]]*\]", answer or ""):
        try:
            values = json.loads(m.group(0).replace("True", "true").replace("False", "false"))
        except json.JSONDecodeError:
            continue
        if isinstance(values, list) and len(values) == n:
            bits = [_bit(v) for v in values]
            if None not in bits:
                return bits
    return None


@dataclass
class Pooled:
    """Confusion counts pooled over every answered example of one score."""

    tp: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0
    unparsed: int = 0

    def add(self, truth: Sequence[int], guess: Sequence[int]) -> None:
        for t, g in zip(truth, guess, strict=True):
            if t and g:
                self.tp += 1
            elif t:
                self.fn += 1
            elif g:
                self.fp += 1
            else:
                self.tn += 1

    @property
    def balanced_accuracy(self) -> float | None:
        pos, neg = self.tp + self.fn, self.tn + self.fp
        if pos == 0 or neg == 0:
            return None
        return (self.tp / pos + self.tn / neg) / 2

    def interval(self, z: float = 1.959964) -> tuple[float, float] | None:
        pos, neg = self.tp + self.fn, self.tn + self.fp
        if pos == 0 or neg == 0:
            return None
        tpr, tnr = (self.tp + 1) / (pos + 2), (self.tn + 1) / (neg + 2)
        centre = (tpr + tnr) / 2
        half = z * math.sqrt(tpr * (1 - tpr) / (pos + 2) + tnr * (1 - tnr) / (neg + 2)) / 2
        return max(0.0, centre - half), min(1.0, centre + half)

    def to_json(self) -> dict:
        return {"tp": self.tp, "tn": self.tn, "fp": self.fp, "fn": self.fn,
                "unparsed": self.unparsed}


def balanced_accuracy(truth: Sequence[int], guess: Sequence[int]) -> float:
    """Mean of the true-positive and true-negative rates (0.5 is chance; nan if a class is
    missing)."""
    p = Pooled()
    p.add(truth, guess)
    ba = p.balanced_accuracy
    return float("nan") if ba is None else ba


def run_classifier(judge, kind: str, explanation: str, items: list[tuple[str, int]],
                   per_prompt: int, rng: random.Random, retries: int = 1) -> Pooled:
    """Shuffle `(text, truth)` items, ask the judge `per_prompt` at a time, pool the answers."""
    items = list(items)
    rng.shuffle(items)
    pooled = Pooled()
    for start in range(0, len(items), per_prompt):
        batch = items[start:start + per_prompt]
        msgs = judge_messages(kind, explanation, [t for t, _ in batch])
        guess = None
        for _ in range(retries + 1):
            guess = parse_judgement(judge.complete(msgs), len(batch))
            if guess is not None:
                break
        if guess is None:
            pooled.unparsed += len(batch)
            continue
        pooled.add([y for _, y in batch], guess)
    return pooled
