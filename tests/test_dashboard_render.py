"""Pure rendering helpers of the dashboard (no Streamlit, no store, no model)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scope.dashboard import render  # noqa: E402

EVIL = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "a&b", "'q'"]


def test_tokens_html_escapes_bodies_and_titles():
    out = render.tokens_html(EVIL, [1.0, 0.5, 0.0, 2.0])
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in out
    assert "a&amp;b" in out
    # every title attribute is quoted and holds no raw quote or angle bracket
    for title in out.split('title="')[1:]:
        value = title.split('"', 1)[0]
        assert "<" not in value and ">" not in value
    assert out.count('class="scope-tok"') == 4 and "scope-peak" not in out
    assert out.count("<span") == 4


def test_tokens_html_shading_and_hover_values():
    out = render.tokens_html([" a", " b", " c"], [0.0, 1.5, 3.0], max_value=3.0, highlight=2)
    assert out.count("background-color") == 2  # zero activation: no shading
    assert "rgba(255,138,0,0.500)" in out and "rgba(255,138,0,1.000)" in out
    assert "activation 1.5" in out and "activation 3" in out
    assert 'class="scope-tok scope-peak"' in out  # the highlighted peak
    assert render.with_css(out).startswith("<style>") and "border-bottom" in render.TOKEN_CSS
    with pytest.raises(ValueError):
        render.tokens_html(["a"], [1.0, 2.0])


def test_shade_bounds():
    assert render.shade(0.0, 1.0) == "transparent"
    assert render.shade(5.0, 0.0) == "transparent"
    assert render.shade(10.0, 1.0).endswith("1.000)")  # clipped
    assert render.shade(-1.0, 2.0).startswith("rgba(40,120,255")


def test_display_token_makes_whitespace_visible():
    assert render.display_token("\n") == "↵"
    assert render.display_token("\tx") == "⇥x"
    assert render.display_token("") == "∅"


def test_context_window_crops_around_peak():
    toks = [str(i) for i in range(100)]
    acts = [0.0] * 100
    w = render.context_window(toks, acts, 50, left=5, right=2)
    assert w.tokens == [str(i) for i in range(45, 53)] and w.center == 5
    w = render.context_window(toks, acts, 1, left=5, right=2)
    assert w.start == 0 and w.center == 1
    html = render.example_html(toks, acts, 50, 1.0, left=5, right=2)
    assert html.count('<span class="scope-tok') == 8 and "…" in html
    assert render.example_html(toks, acts, 50, 1.0, left=None).count('<span class="scope-tok') == 100


def test_logit_table_escapes():
    out = render.logit_table_html([("<b>x</b>", 1.25), (" y", 0.5)], "Promoted <tokens>")
    assert "<b>x" not in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert "Promoted &lt;tokens&gt;" in out and "+1.250" in out
    assert "none" in render.logit_table_html([], "t", positive=False)


def test_histogram_figure():
    fig = render.histogram_figure([1, 0, 5], [0.0, 1.0, 2.0, 3.0])
    step = fig.data[0]
    assert list(step.x) == [0.0, 1.0, 2.0, 3.0] and list(step.y) == [1, 0, 5, 5]
    assert step.line.shape == "hv"
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "linear"
    edges = np.geomspace(1e-2, 10, 5)
    assert render.log_spaced(edges) and not render.log_spaced([0.0, 1.0, 2.0])
    fig = render.histogram_figure([0, 2, 3, 0], edges)
    assert fig.layout.xaxis.type == "log"
    assert np.allclose(fig.layout.xaxis.range, np.log10([edges[0], edges[4]]))
    assert list(render.histogram_figure([0, 0, 5, 0, 0, 0], range(7)).layout.xaxis.range) == [1, 4]
    with pytest.raises(ValueError):
        render.histogram_figure([1, 2], [0.0, 1.0])


def test_density_figure_and_summary():
    d = np.array([0.0, 0.0, 1e-4, 1e-3, 0.2])
    s = render.density_summary(d)
    assert s == {"features": 5, "dead": 2, "live": 3, "dense": 1, "median_live_density": 1e-3}
    fig = render.density_figure(d, bins=4)
    assert sum(fig.data[0].y) == 3
    assert len(render.density_figure(np.zeros(3)).data) == 0


def test_format_helpers():
    assert render.format_density(0) == "0% (dead)"
    assert render.format_density(0.0123) == "1.23%"
    assert render.format_density(0.83) == "83%"
    # rare features in plain notation with two significant digits (no 7.69e-04%)
    assert render.format_density(7.69e-6) == "0.00077%"
    assert render.format_density(7.7e-5) == "0.0077%"
    assert render.format_density(1e-7) == "0.00001%"
    assert render.format_value(3.14159) == "3.14" and render.format_value(0.0) == "0"
    assert render.format_value(2030.4) == "2,030" and render.format_value(-12345.6) == "-12,346"
    assert render.format_value(0.000123) == "0.000123" and render.format_value(999.4) == "999"
    assert render.format_count(1234) == "1,234"


def test_log_ticks_are_round_and_inside_the_range():
    assert render.log_ticks(3, 40) == [5.0, 10.0, 20.0]
    assert render.log_ticks(0.3, 3000) == [1.0, 10.0, 100.0, 1000.0]  # thinned to powers of 10
    assert render.log_ticks(0, 1) == []
    fig = render.histogram_figure([0, 4, 9, 1, 0], list(np.geomspace(1, 3000, 6)))
    ticks = fig.layout.xaxis.tickvals
    assert list(fig.layout.xaxis.ticktext) == [render.format_value(t) for t in ticks]
    assert "1,000" in fig.layout.xaxis.ticktext


def test_whitespace_tokens_stay_short():
    assert render.display_token(" " * 40) == "␣×40"
    assert render.display_token(" " * 8) == " " * 8  # indentation shows as itself


def test_md_text_neutralises_links_and_images():
    for payload in ["![x](http://127.0.0.1:9/a.png)", "[click](http://evil.example)",
                    "http://127.0.0.1:9/x", "www.example.com", "a@b.co", "<img src=x>",
                    "HTTPS://x.y", "ftp://x.y", "mailto:a@b.c"]:
        out = render.md_text(payload)
        # every Markdown-active character is backslash-escaped
        assert all(out[i - 1] == "\\" for i, c in enumerate(out) if c in "![]()<>")
        # no URL or e-mail pattern survives for GFM's autolinker (word joiner inside it)
        plain = out.replace("\\", "")
        assert not re.search(r"(?i)(https?|ftp|mailto):|www\.|\w@", plain), out
        assert out.replace("\u2060", "").replace("\\", "") == payload  # shows the same text
    assert render.md_text("x" * 500, limit=10) == "x" * 9 + "…"
    assert render.md_text("a\nb") == "a b"


def test_inspector_rank_relative_and_hidden():
    acts = np.array([[5.0, 1.0, 0.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    store_max = np.array([10.0, 1.0, 4.0, 100.0])
    rel = render.inspector_rank(acts, store_max, relative=True, k=3)
    assert rel[0] == [(1, 1.0, 1.0), (0, 5.0, 0.5), (3, 9.0, 0.09)] and rel[1] == []
    raw = render.inspector_rank(acts, store_max, relative=False, k=2)
    assert [f for f, _, _ in raw[0]] == [3, 0]
    hidden = render.inspector_rank(acts, store_max, hide=np.array([0, 1, 0, 0], bool), k=3)
    assert [f for f, _, _ in hidden[0]] == [0, 3]
    page = render.inspector_html("s<x", ["<b>", "y"], rel, ["l0", "<lab>", "l2", "l3"])
    assert "<b>" not in page and "&lt;lab&gt;" in page and "./?sae=s%3Cx&amp;feature=1" in page


def test_top_features_per_token_and_prompt_features():
    acts = np.array([[0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    per = render.top_features_per_token(acts, ["a", "b", "c"], k=2)
    assert per == [[(1, 2.0), (2, 1.0)], [(0, 3.0), (3, 0.5)], []]
    assert render.prompt_features(acts, k=3) == [(0, 3.0), (1, 2.0), (2, 1.0)]
    with pytest.raises(ValueError):
        render.top_features_per_token(acts, ["a"], k=2)


def test_parse_steering():
    assert render.parse_steering("12:8, 40:-3.5;") == {12: 8.0, 40: -3.5}
    assert render.parse_steering("") == {}
    for bad in ["12", "x:1", "3:abc", "-1:2", "3:inf"]:
        with pytest.raises(ValueError):
            render.parse_steering(bad)
    rows = render.steering_rows({3: 1.0, 99: 2.0}, "add", d_sae=10)
    assert rows[0] == {"feature": 3, "mode": "add", "strength": 1.0} and "note" in rows[1]


def test_md_escape():
    assert render.md_escape("**x** [a](javascript:1)") == r"\*\*x\*\* \[a\]\(javascript\:1\)"
    assert render.md_escape("plain words") == "plain words"


def test_describe_corpus():
    assert render.describe_corpus("stdlib") == "stdlib"
    text = render.describe_corpus({"source": "texts", "split": "all", "sha256": "0123456789abcdef0"})
    assert text == "texts, split all, sha256 0123456789ab…"
    assert render.describe_corpus(None) == "?"


def test_contexts_html_one_block():
    from types import SimpleNamespace as NS

    ex = NS(tokens=["<b>", " x", " y"], activations=[0.0, 2.0, 1.0], max_position=1,
            max_activation=2.0)
    band = NS(low=0.5, high=1.0, examples=[ex])
    out = render.contexts_html([ex, ex], [band], 2.0)
    assert out.startswith("<style>") and "Top 2 contexts" in out
    assert "Samples across activation bands" in out and "activation 0.5 – 1 (1 samples)" in out
    assert out.count('<div class="scope-tokens">') == 3 and "<b>" not in out
    assert "did not fire" in render.contexts_html([], [], 0.0)


# -- the escaping rule, read from the pages' source -------------------------------------------

# Streamlit calls whose text arguments are rendered as Markdown (labels and help included), and
# st.html, whose argument is HTML: every value put into them must come from `render`.
MARKDOWN_CALLS = {
    "markdown", "caption", "subheader", "header", "title", "write", "error", "warning", "info",
    "success", "toast", "metric", "button", "link_button", "page_link", "selectbox",
    "multiselect", "text_input", "text_area", "number_input", "checkbox", "toggle", "radio",
    "slider", "select_slider", "expander", "tabs", "download_button", "html", "spinner",
}
TEXT_KWARGS = {"label", "help", "value", "placeholder", "body", "delta", "caption"}
SAFE_CALLS = {"int", "len", "float"}  # their values are numbers


def _safe(node) -> bool:
    """A value that may go into Markdown: a literal, a number (a call to int/len, or any value
    with a format spec such as `:,` or `.2f`), or the result of a `render` helper."""
    import ast

    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(v, ast.Constant) or _safe_formatted(v) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _safe(node.left) and _safe(node.right)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id == "render":  # a constant of render (e.g. its CSS)
        return True
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_safe(e) for e in node.elts)
    if isinstance(node, ast.IfExp):
        return _safe(node.body) and _safe(node.orelse)
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id == "render":
            return True
        return isinstance(f, ast.Name) and f.id in SAFE_CALLS
    return False


def _safe_formatted(v) -> bool:
    import ast

    if v.format_spec is not None:  # `{n:,}`, `{x:.2f}`, `{i:d}`: a number, or it would raise
        spec = "".join(p.value for p in v.format_spec.values if isinstance(p, ast.Constant))
        return not spec.endswith("s") and v.conversion == -1
    return _safe(v.value)


def markdown_offences(path) -> list[str]:
    """`file:line call` for every Markdown/HTML-rendering Streamlit call fed an unescaped value."""
    import ast

    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in MARKDOWN_CALLS):
            continue
        recv = node.func.value
        if isinstance(recv, ast.Name) and recv.id in ("render", "data", "np", "math", "re"):
            continue
        args = list(node.args[:1]) if node.func.attr not in ("metric",) else list(node.args[:3])
        args += [k.value for k in node.keywords if k.arg in TEXT_KWARGS]
        for a in args:
            if not _safe(a):
                out.append(f"{path.name}:{node.lineno} {node.func.attr}({ast.unparse(a)[:60]})")
    return out


DASHBOARD = Path(render.__file__).resolve().parent.parent
PAGES = sorted([DASHBOARD / "app.py", *(DASHBOARD / "views").glob("*.py")])


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_pages_render_markdown_only_from_escaped_values(page):
    assert markdown_offences(page) == []


def test_the_markdown_grep_catches_unescaped_values(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import streamlit as st\nst.warning(f'no target {target}')\n"
                   "c[0].metric('Model', name)\nst.caption(', '.join(names))\n"
                   "st.button('go', help=f'{spec!r}')\nst.markdown(f'{x:>10s}')\n"
                   "st.error(f'{n:,} ok {render.md_text(t)}')\n")
    assert [o.split()[0] for o in markdown_offences(bad)] == [
        "bad.py:2", "bad.py:3", "bad.py:4", "bad.py:5", "bad.py:6"]


def test_fit_table_fits_900_px_and_wraps_only_what_is_too_long():
    """Known answers: the fixed columns as given, the text column the rest of the 900 px
    budget; one line while the longest label fits, taller rows (over 64 px, the grid's
    threshold for wrapping) when it does not, capped at MAX_LINES."""
    from scope.dashboard.render import table as T

    fixed = {"feature": 64, "density": 70, "firings": 66, "max act": 54, "mean act": 54}
    short = ["' ' 16% · 't' 10% · 'a' 9% [dense]"]  # 182 px in the grid's font (measured 178)
    fit = render.fit_table(fixed, "label", short, selectable=True)
    assert fit.widths == {**fixed, "label": T.FIT_PX - 32 - 308}
    assert sum(fit.widths.values()) + T.ROW_MARKER_PX == T.FIT_PX  # no sideways scrolling
    assert (fit.lines, fit.row_height) == (1, T.ROW_PX)
    prose = ["opening parentheses of function calls in Python code, and of class bases"]
    assert T.text_width(prose[0]) == pytest.approx(413.1)  # 5.74 px a character
    fit = render.fit_table(fixed, "label", prose, selectable=True)
    room = fit.widths["label"] - T.CELL_PAD_PX
    assert fit.lines == int(np.ceil(413.1 * 1.04 * 1.2 / room)) == 3
    assert fit.row_height == 35 + 1 + 19 * 2 > 64
    many = {**fixed, "score": 54, "relevance": 54}  # every column: the label keeps its minimum
    fit = render.fit_table(many, "label", ["x" * 400], selectable=True, budget=400)
    assert fit.widths["label"] == T.MIN_TEXT_PX and fit.lines == T.MAX_LINES
    assert render.fit_table(fixed, "label", []).lines == 1  # an empty page
    assert render.table_height(10, 35) == 10 * 35 + 38 and render.table_height(50, 35) == 760


def test_short_sae_names_fit_the_sidebar_and_stay_distinct():
    from scope.dashboard.render import short_sae_names

    demo = "bundled/gemma-3-270m/blocks.9.hook_resid_post/width_4096"
    assert short_sae_names([demo]) == {demo: "L9 resid_post · 4096"}
    two = ["r/m/blocks.3.hook_resid_post/width_2048", "r/m/blocks.9.hook_resid_post/width_4096"]
    assert list(short_sae_names(two).values()) == ["L3 resid_post · 2048", "L9 resid_post · 4096"]
    clash = ["p/blocks.1.hook_z/width_16", "p/L1 z · 16"]
    assert short_sae_names(clash) == {n: n for n in clash}  # never two SAEs under one name
