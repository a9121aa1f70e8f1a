# Two commands set everything up on a fresh machine:
#   make quick   installs, then runs the main job: adan-experiments vision --quick (under 5 minutes)
#   make test    installs, then runs the whole test suite (what CI runs)
PYTHON ?= python3
# torch is installed first and pinned only when absent: an open range would let pip pick a CUDA build.
TORCH_VERSION ?= 2.13.0
EXTRAS ?= test,triton,experiments,jax

.PHONY: install quick test bench
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -e ".[$(EXTRAS)]"

quick: install
	adan-experiments vision --quick --out results/quick

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) benchmarks/step_time.py
