# Two commands set everything up on a fresh machine:
#   make quick   installs, then runs the main job: adan-experiments quick (the smoke test, about a minute)
#   make test    installs, then runs the whole test suite (what CI runs)
PYTHON ?= python3
# torch is installed first and pinned only when absent: an open range would let pip pick a CUDA build.
TORCH_VERSION ?= 2.13.0
EXTRAS ?= test,triton,experiments,jax,integrations,docs

.PHONY: install quick test docs bench
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -e ".[$(EXTRAS)]"

# The main job needs only the experiments extra.
quick:
	$(MAKE) install EXTRAS=experiments
	adan-experiments quick --out results/quick

# The whole suite, then the docs site in strict mode (a broken link or reference fails).
test: install
	$(PYTHON) -m pytest
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --quiet --site-dir site

docs: install
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir site

bench: install
	$(PYTHON) benchmarks/step_time.py
