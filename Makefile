# Two commands a new user needs (both set up everything they use on a fresh machine):
#   make demo   - build the environment, extract features with the bundled model, open the dashboard
#   make test   - build the environment (plus headless Chromium) and run the whole test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SHELL  := /bin/bash

.PHONY: install demo test test-fast lint browser bench clean notebooks

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# A bare `torch` requirement pulls a multi-GB CUDA build; without a GPU ask for the CPU wheel.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install --quiet torch; \
	else $(PIP) install --quiet torch==2.13.0 || $(PIP) install --quiet torch --index-url https://download.pytorch.org/whl/cpu; fi
	$(PIP) install --quiet -e '.[dashboard,corpus,notebooks,dev]'
	touch $(STAMP)

install: $(STAMP)

# Ctrl-C ends the demo (exit 130): that is the user's choice, not a failure for make to report.
demo: $(STAMP)
	@$(VENV)/bin/scope demo $(ARGS) || { rc=$$?; [ $$rc -eq 130 ] || exit $$rc; }

# Headless Chromium for the browser test; installed by the test setup itself so CI on a fresh
# machine has it.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check scope tests dashboard benchmarks
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q $(ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m "not slow and not browser" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check scope tests dashboard benchmarks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info

# Re-run every notebook on the bundled demo and keep its outputs in the file (they are committed,
# so the notebooks read well on a code-hosting page); tests/test_notebooks.py still executes them.
notebooks: $(STAMP)
	for nb in notebooks/*.ipynb; do \
	  HF_HUB_OFFLINE=1 $(PY) -c "import sys, nbformat; from nbclient import NotebookClient; \
	    p = sys.argv[1]; nb = nbformat.read(p, as_version=4); \
	    NotebookClient(nb, timeout=1800, kernel_name='python3', resources={'metadata': {'path': 'notebooks'}}).execute(); \
	    nbformat.write(nb, p); print('executed', p)" $$nb || exit 1; \
	done
