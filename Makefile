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

# System packages first (PostgreSQL + PostGIS for the real STAC API server of the tests;
# a no-op when installed). Missing ones fail the install in CI (CI=true) only: elsewhere
# the tests that need them skip, saying why.
$(STAMP): pyproject.toml scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh || { test "$$CI" != true || exit 1; \
		echo "make install: continuing without the system packages" >&2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	bash scripts/demo.sh

bench: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python scripts/bench_dip_cost.py
	$(BIN)/python scripts/compare_engines.py
	$(BIN)/python scripts/bench_run_overhead.py
	$(BIN)/python scripts/bench_run_scale.py
	$(BIN)/python scripts/bench_full_scene.py
	$(BIN)/python scripts/bench_ray_data.py
	$(BIN)/python scripts/bench_guided.py
	$(BIN)/python scripts/bench_guided_s1.py
	$(BIN)/python scripts/bench_mcpn.py
	$(BIN)/python scripts/bench_dip_defaults.py
	$(BIN)/python scripts/bench_modis_ndvi.py
	$(BIN)/python scripts/bench_sr.py
	$(BIN)/python scripts/bench_sr_run.py --steps 3
	$(BIN)/python scripts/bench_convnp.py
	$(BIN)/python scripts/bench_ndvi_paper.py
	$(BIN)/python scripts/bench_anonymise.py
	$(BIN)/python scripts/bench_warm_start.py
	$(BIN)/python scripts/cost_table.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
