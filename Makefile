# bioprune: `make demo` runs the whole chain on the sample RNA data; `make test` runs the linter and
# every test, `make test-fast` the fast tier (README "Tests").
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Installs are reproducible: every pip call is constrained by requirements/lock.txt, the exact set
# of versions that last passed the suite here (`pip freeze` of that venv). `make install-latest`
# resolves the same requirements without the lock into .venv-latest, so a release that breaks us
# shows up in one command; `make lock` rewrites the lock from a venv that passed (see README).
LOCK      ?= requirements/lock.txt
CONSTRAIN ?= -c $(LOCK)

.PHONY: install install-latest test-latest lock demo demo-esm2 lint test test-fast bench bench-gpu \
        clean experiment experiment-quick

install: $(STAMP)

$(STAMP): setup.py Makefile requirements/runtime.txt requirements/esm-runtime.txt $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: everything after it must see it (DeepSpeed imports torch to build)
	$(PIP) install -q $(CONSTRAIN) torch==2.13.0
	$(PIP) install -q $(CONSTRAIN) -r requirements/runtime.txt
	# DeepSpeed built against that torch, with its CPU shared-memory all-reduce op compiled now:
	# otherwise every process JIT-compiles it into ~/.cache/torch_extensions on start (minutes),
	# and checkouts with different venv paths sharing that cache rebuild it on every switch.
	# --no-cache-dir: a cached wheel built without the op would be reused silently.
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 DS_ACCELERATOR=cpu \
	    $(PIP) install -q --no-cache-dir --no-build-isolation $(CONSTRAIN) deepspeed
	$(PIP) install -q --no-deps $(CONSTRAIN) esm
	$(PIP) install -q $(CONSTRAIN) -r requirements/esm-runtime.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import torch, deepspeed, fm, triton, mpi4py; from esm.models.esmc import ESMC; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(PY) -c "from deepspeed.git_version_info import installed_ops as o; assert o.get('deepspeed_shm_comm'), 'DeepSpeed was installed without its shm comm op; rm -rf $(VENV) and make install'"
	touch $(STAMP)

# The newest versions the registry serves today (torch stays 2.13.0: the CPU wheel on this disk).
install-latest:
	$(MAKE) install VENV=.venv-latest CONSTRAIN=
	.venv-latest/bin/pip list --format=freeze 2>/dev/null | sort > .venv-latest/versions.txt
	@echo "--- versions that differ from $(LOCK) (lock | latest):"
	@diff <(sort $(LOCK)) <(grep -iv '^pip==' .venv-latest/versions.txt | grep -v '^bioprune==') \
	    | grep '^[<>]' || echo "none"

test-latest: install-latest
	$(MAKE) test VENV=.venv-latest CONSTRAIN=

# Rewrite the lock from $(VENV) (run after `make test` passed in it).
lock:
	$(PIP) freeze --all --exclude-editable 2>/dev/null | grep -iv '^pip==' | sort > $(LOCK)

demo: install
	$(PY) launch/demo.py --out runs/demo

demo-esm2: install
	$(PY) launch/demo.py --model esm2 --out runs/demo-esm2

# ruff (pinned in the lock; rules in ruff.toml) over the checkout's Python files (it skips what
# .gitignore lists).
lint: install
	$(VENV)/bin/ruff check .

# Everything: the linter, then every test (pytest's exit code 5, no test collected, is a pass).
test: lint
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The fast tier: every test not marked slow or multirank (markers in pytest.ini).
test-fast: install
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow and not multirank" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: install
	$(PY) launch/bench/scoring.py

# The GPU throughput report (issue 11): kernels vs cuBLAS GEMM, tokens/s of train / Fisher / score
# for ESM-C 300M/600M and RNA-FM in bf16, targets PASS/FAIL; exit 2 without CUDA.
bench-gpu: install
	$(PY) launch/bench/gpu.py --out runs/bench-gpu

# The pruning study: RNA, coresets of 0.5-2 %, calibrated (results/calibration/); about 100 min
# on a 2-core CPU, two arms at a time; rerun to resume.
EXPERIMENT_CONFIG ?= configs/experiments/rna-1pct.toml
EXPERIMENT_OUT    ?= runs/experiment-rna-1pct
experiment: install
	$(PY) launch/experiment.py --config $(EXPERIMENT_CONFIG) --out $(EXPERIMENT_OUT)

experiment-quick: install
	$(PY) launch/experiment.py --config configs/experiments/rna-quick.toml --out runs/experiment-quick

clean:
	rm -rf runs build *.egg-info
