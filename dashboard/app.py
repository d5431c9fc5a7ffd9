"""The repository's Streamlit entry: `streamlit run dashboard/app.py -- STORE`.

The app itself is the package's `scope/dashboard/app.py` (what `scope dashboard STORE` runs);
this file only runs it, so the checkout and an installed wheel serve the same pages.
"""

import runpy

runpy.run_module("scope.dashboard.app", run_name="__main__")
