"""The Streamlit dashboard: `app.py` (router), `views/` (pages), `data.py` (the one data
module), `render.py` (pure helpers) and `launch.py` (`scope dashboard`)."""
