"""Dashboard pages, each a Streamlit script run by `st.navigation` from `app.py`."""
