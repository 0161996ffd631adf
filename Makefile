# dipfill — the two set-up commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is pinned for these machines: 2.13.0 is a local CPU wheel; any other request would
# download gigabytes of CUDA packages. Change it where a GPU build is wanted (deploy/).
TORCH  ?= torch==2.13.0

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	bash scripts/demo.sh

bench: install
	$(BIN)/python scripts/bench_dip_cost.py
	$(BIN)/python scripts/compare_engines.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
