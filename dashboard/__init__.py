"""The scope dashboard: a Streamlit router (`app.py`), its pages, one data module, and pure
rendering helpers (`render.py`) that are tested without Streamlit."""
