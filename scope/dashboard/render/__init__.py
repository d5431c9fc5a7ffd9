"""Pure rendering helpers for the dashboard (no Streamlit, no store, no model).

`text` escapes and formats (the one escaping function, `md_text`, lives there), `table` sizes
grid columns to fit a 900 px window, `tokens` builds the HTML of shaded tokens and tables,
`figures` the plotly charts, `prompt` the inspector's rankings and the steering box's parsing.
Pages use them as `render.NAME`.
"""

from __future__ import annotations

from scope.dashboard.render.figures import (
    density_figure,
    density_summary,
    histogram_figure,
    log_spaced,
    log_ticks,
)
from scope.dashboard.render.prompt import (
    inspector_html,
    inspector_rank,
    parse_steering,
    prompt_features,
    steering_rows,
    top_features_per_token,
)
from scope.dashboard.render.table import FIT_PX, TableLayout, fit_table, table_height
from scope.dashboard.render.text import (
    as_int,
    describe_corpus,
    display_token,
    esc,
    explanation_caption,
    format_count,
    format_density,
    format_value,
    md_escape,
    md_text,
    short_sae_names,
    store_caption,
    store_error_message,
)
from scope.dashboard.render.tokens import (
    LAYOUT_CSS,
    TOKEN_CSS,
    Window,
    context_window,
    contexts_html,
    example_html,
    feature_href,
    feature_link,
    logit_table_html,
    neighbours_html,
    shade,
    tokens_html,
    with_css,
)

__all__ = [
    "as_int",
    "context_window",
    "contexts_html",
    "density_figure",
    "density_summary",
    "describe_corpus",
    "display_token",
    "esc",
    "example_html",
    "explanation_caption",
    "feature_href",
    "feature_link",
    "format_count",
    "format_density",
    "format_value",
    "histogram_figure",
    "inspector_html",
    "inspector_rank",
    "log_spaced",
    "log_ticks",
    "logit_table_html",
    "md_escape",
    "md_text",
    "short_sae_names",
    "neighbours_html",
    "parse_steering",
    "prompt_features",
    "shade",
    "steering_rows",
    "store_caption",
    "store_error_message",
    "FIT_PX",
    "fit_table",
    "table_height",
    "TableLayout",
    "LAYOUT_CSS",
    "TOKEN_CSS",
    "tokens_html",
    "top_features_per_token",
    "Window",
    "with_css",
]
