# ncakit: every command a user or CI needs. On a fresh machine with only Python 3.10+:
#   make demo   -> creates .venv, installs ncakit[toy] with constraints.txt, runs the classroom demo
#   make test   -> same venv, installs everything, runs the whole suite (tests/ + tutorials/ notebooks)
# Both are idempotent: the install steps are stamp files that only rerun when pyproject.toml or
# constraints.txt change.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
PIN    := -c constraints.txt
OUT    ?= out/demo
# Extra pytest flags, e.g. `make test PYTEST_ARGS="-k losses -x"`.
PYTEST_ARGS ?=
NOTEBOOKS := $(sort $(wildcard tutorials/[0-9]*.ipynb))

export TOKENIZERS_PARALLELISM = false
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS = 1
export MPLBACKEND = Agg
export PYTHONHASHSEED = 0

.PHONY: demo test test-fast test-browser lint format scrub notebooks bench gpu-check scale-demo constraints clean help

help:
	@echo "make demo        classroom demo (toy bandits: DPO/InfoNCA vs NCA) -> $(OUT)/"
	@echo "make test        the whole test suite, notebooks included (what CI runs)"
	@echo "make test-fast   tests/ without the slow and notebook tests"
	@echo "make test-browser the live sliders in JupyterLab in a headless Chromium (installs chromium as root)"
	@echo "make scale-demo  the tiny-cpu recipe of scale/train.py + its dynamics plot"
	@echo "make notebooks   open Jupyter on tutorials/"
	@echo "make bench       benchmarks/ -> benchmarks/results/*.json and benchmarks/README.md"
	@echo "make gpu-check   GPU acceptance run (one H100/H200, <= 8 min) -> benchmarks/results/gpu_*.json"
	@echo "make lint        ruff check + format check;  make scrub  strip notebook metadata, sync jupytext pairs"

$(PY):
	$(PYTHON) -m venv $(VENV)

# The toy track needs torch + numpy + matplotlib + tqdm only.
$(VENV)/.stamp-toy: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q $(PIN) -e ".[toy]"
	touch $@

# Everything CI can run here (no bitsandbytes: it needs a GPU).
$(VENV)/.stamp-all: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q $(PIN) -e ".[all]"
	touch $@ $(VENV)/.stamp-toy

# DeepSpeed, for the 2-process ZeRO-3 test on CPU: an sdist whose setup.py imports torch, so no build
# isolation (it would pull a CUDA torch) and no compiled ops (DS_BUILD_OPS=0; pure Python, ~15 s).
$(VENV)/.stamp-deepspeed: $(VENV)/.stamp-all
	DS_BUILD_OPS=0 $(PIP) install -q $(PIN) --no-build-isolation deepspeed
	touch $@

demo: $(VENV)/.stamp-toy
	$(PY) toy/demo.py --out $(OUT)

# Two pytest workers on 2 cores, one thread each; --dist loadfile keeps a notebook's cells on one worker.
test: $(VENV)/.stamp-all $(VENV)/.stamp-deepspeed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile tests --ignore=tests/browser $(NOTEBOOKS) --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tutorials/sanitize.cfg $(PYTEST_ARGS)

test-fast: $(VENV)/.stamp-all
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile tests --ignore=tests/browser -m "not slow and not notebook" $(PYTEST_ARGS)

# JupyterLab on 127.0.0.1, notebook 1 run, a slider moved, the live figure must change with no page error
# (tests/browser). Chromium is Debian's package (browser downloads are not possible here), driven by
# the playwright package with executable_path; as root, the target installs chromium if it is missing.
test-browser: $(VENV)/.stamp-browser
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q tests/browser $(PYTEST_ARGS)

$(VENV)/.stamp-browser: $(VENV)/.stamp-all
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "test-browser: needs Debian's chromium: apt-get install chromium (as root)" >&2; exit 1; }
	$(PIP) install -q $(PIN) -e ".[browser]"
	touch $@

lint: $(VENV)/.stamp-all
	$(VENV)/bin/ruff check ncakit toy scale tests benchmarks tutorials/*.py
	$(VENV)/bin/ruff format --check ncakit toy scale tests benchmarks tutorials/*.py

format: $(VENV)/.stamp-all
	$(VENV)/bin/ruff check --fix ncakit toy scale tests benchmarks tutorials/*.py
	$(VENV)/bin/ruff format ncakit toy scale tests benchmarks tutorials/*.py

# Notebook hygiene (Pyro style): outputs kept so GitHub shows the plots; metadata, widget state and
# timestamps stripped; the py:percent twin re-rendered from the notebook (after editing in Jupyter).
# To re-execute notebooks from their .py twins instead: $(PY) tutorials/build.py
scrub: $(VENV)/.stamp-all
	$(PY) tutorials/build.py --scrub-only $(NOTEBOOKS)

notebooks: $(VENV)/.stamp-all
	$(VENV)/bin/jupyter lab tutorials/

scale-demo: $(VENV)/.stamp-all
	$(VENV)/bin/accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \
		--config scale/recipes/tiny-cpu.yaml --output_dir out/scale-demo
	$(PY) scale/plot_dynamics.py out/scale-demo

bench: $(VENV)/.stamp-all
	$(PY) benchmarks/run_all.py

# On a GPU machine: `pytest -m gpu tests`, then 7B LoRA / QLoRA, 1.1B full and FSDP2 steps (DEVELOPERS.md).
# QLoRA needs bitsandbytes (not in .stamp-all): without it qlora is skipped with a one-line message.
gpu-check: $(VENV)/.stamp-all
	$(PY) benchmarks/gpu_check.py

# Re-resolve the pins (keeps torch on the CPU wheel and the file's header comments, its date updated).
constraints: | $(PY)
	$(PIP) install -q "torch==2.13.0" && $(PIP) install -q -e ".[all,browser]" && DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation deepspeed
	{ grep "^#" constraints.txt | sed "s/(CPU) on [0-9-]*\./(CPU) on $$(date +%F)./"; \
	  $(PIP) freeze --exclude-editable | grep -v "^ncakit" | sed "s/+cpu//"; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf out .pytest_cache .ruff_cache
