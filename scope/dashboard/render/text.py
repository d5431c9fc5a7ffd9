"""Text for the dashboard: the one escaping function for Markdown (`md_text`), HTML escaping
(`esc`) and the number formats every page uses.

Every string from a store, a manifest, a labels file, a model spec or the user that reaches a
Streamlit element rendering Markdown goes through `md_text`; every string that goes into HTML
goes through `esc` (html.escape with quote=True, for element bodies and `title=` attributes).
Nothing here imports Streamlit.
"""

from __future__ import annotations

import html
import math
import re


def esc(text: object) -> str:
    """HTML-escape any text (including quotes) for element bodies and attribute values."""
    return html.escape(str(text), quote=True)

_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:@&")

def md_escape(text: object) -> str:
    """Backslash-escape Markdown syntax so text from a store shows literally in st.markdown,
    captions and widget labels (Streamlit escapes raw HTML there itself)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))

_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|www|xmpp)(\\?[:.])")

def md_text(value: object, limit: int = 300) -> str:
    """Text from a store, a manifest, a model spec or a file name, ready for any Streamlit
    element that renders Markdown (markdown, caption, subheader, metric, error, help, labels).

    The one helper for that: it cuts the text to `limit` characters and backslash-escapes every
    Markdown character, so `![x](http://host/)` is shown, not fetched, `[a](b)` is not a link,
    and `http://host` or `www.host` is not auto-linked (its `:` and `.` are escaped)."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = md_escape(text.replace("\r", " ").replace("\n", " "))
    # GFM turns URL-like text into links after escapes are resolved: a word joiner (U+2060,
    # invisible) inside each pattern keeps it plain text
    text = _AUTOLINK.sub(lambda m: m.group(1) + "\u2060" + m.group(2), text)
    return text.replace("@", "\u2060@")

def as_int(value: object, default: int = 0) -> int:
    """An int from a manifest field that may be missing or hostile."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default

def store_error_message(exc: BaseException) -> str:
    """What the dashboard says when the store cannot be read: no traceback, no server path.

    A store that a run rewrote while the dashboard held it is intact: say so (the app reopens
    it), never advise extracting it again."""
    if type(exc).__name__ == "StoreChangedError":
        return ("The feature store was rewritten while the dashboard had it open (an extraction "
                "or merge finished); its data is intact. Reload the page to read the new "
                "version.")
    return ("The feature store cannot be read: it is missing, corrupt or was written by a "
            f"newer scope ({md_text(type(exc).__name__)}; the server log has the details). "
            "Extract it again with `scope extract`, or start the dashboard on another store.")

def store_caption(name: str, manifest: dict) -> str:
    """The sidebar's one line about the store (every field escaped)."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    return (f"Store {md_text(name)} · model {md_text(model.get('name', '?'))} · "
            f"{as_int(manifest.get('tokens')):,} tokens · {md_text(manifest.get('status', '?'))}")

def display_token(token: str) -> str:
    """Make invisible characters visible: newlines as ↵, tabs as ⇥, an empty token as ∅, a long
    run of more than 16 spaces as `␣×N` (so a highlighted whitespace token stays inside its
    column)."""
    if token == "":
        return "∅"
    if len(token) > 16 and token.strip(" ") == "":
        return f"␣×{len(token)}"
    return token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")

def format_value(value: float) -> str:
    """A number as a researcher reads it: `2,030`, `20.3`, `0.203`, `0.00012` (no e-notation,
    no -0)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    a = abs(value)
    if a >= 999.5:
        return f"{value:,.0f}"
    if a >= 1e-4:
        return f"{value:.3g}"
    return f"{value:.2e}"

def format_count(count: float) -> str:
    """An integer count with thousands separators: `1,234`."""
    return f"{int(count):,}"

def format_density(density: float) -> str:
    """A firing fraction as a percentage in plain notation: `12.3%`, `0.0077%`, `0.00012%`."""
    if density <= 0:
        return "0% (dead)"
    pct = 100.0 * density
    if pct >= 1:
        return f"{pct:.3g}%"
    digits = max(0, 1 - math.floor(math.log10(pct)))  # two significant digits
    text = f"{pct:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"

def describe_corpus(corpus: object) -> str:
    """One line for the manifest's corpus description (a string, or a dict of its fields)."""
    if not isinstance(corpus, dict):
        return str(corpus) if corpus else "?"
    parts = [str(corpus.get("source") or corpus.get("name") or "?")]
    for key, value in corpus.items():
        if key in ("source", "name") or value in (None, "", [], {}):
            continue
        text = str(value)
        parts.append(f"{key} {text[:12] + '…' if len(text) > 16 else text}")
    return ", ".join(parts)

def explanation_caption(explanation: tuple[str, float | None, str] | None) -> str:
    """Markdown for the line under a feature's label: who explained it and how well."""
    if explanation is None:
        return ("Automatic label: the tokens it fires on most with their share of its firings "
                "(import or write explanations with `scope labels import` / `scope explain`).")
    _, score, explainer = explanation
    how = (f"detection score {score:.2f} (0.5 = chance, 1 = perfect)" if score is not None
           else "not scored")
    return f"Explanation by {md_text(explainer or 'unknown')} · {how}"


def short_sae_names(names: list[str]) -> dict[str, str]:
    """Short display names for the sidebar's SAE box (the full name is shown beneath it): the
    path segments every name shares at the front dropped (all but the last two for one SAE),
    `blocks.N.hook_` written `LN `, `/width_` written ` · `. Full names wherever two collide.

    >>> short_sae_names(["bundled/gemma-3-270m/blocks.9.hook_resid_post/width_4096"])
    {'bundled/gemma-3-270m/blocks.9.hook_resid_post/width_4096': 'L9 resid_post · 4096'}
    """
    parts = [n.split("/") for n in names]
    common = 0
    if len(parts) == 1:
        common = max(0, len(parts[0]) - 2)
    else:
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
    short = {}
    for name, p in zip(names, parts, strict=True):
        text = "/".join(p[common:])
        text = re.sub(r"\bblocks\.(\d+)\.hook_", r"L\1 ", text).replace("/width_", " · ")
        short[name] = text or name
    if len(set(short.values())) < len(short):
        return {n: n for n in names}
    return short
