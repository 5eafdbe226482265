# make install: the full pinned stack in .venv (cached outside the clone, see tools/install.sh)
# make test:    the test suite (installs first if needed)
# make demo:    the main job on the embedded default data (installs first if needed)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install install-xformers test test-all demo bench clean

install:
	@bash tools/install.sh

# Optional: xformers kernels (GPU only; attn_impl="xformers"). SDPA is the default and needs nothing extra.
install-xformers: install
	$(PY) -m pip install --no-deps xformers  # --no-deps: it must not replace the pinned torch
	$(PY) -c "from eva02.backbone.trv import xformers_available as a; print('xformers usable:', a())"

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Also the slower end-to-end runs (marked `slow`).
test-all: install
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo_backbone.py --output output/demo

bench: install
	$(PY) bench/backbone.py

clean:
	rm -rf output .pytest_cache
