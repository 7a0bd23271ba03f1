# CPU path: installs the CPU build of torch first so nothing pulls CUDA wheels, then the package and its
# test/launcher extras in one resolve. GPU users: `pip install -e ".[vllm,flash]"` with their CUDA torch.
PYTHON ?= python3
STAMP := .make/installed
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test test-all test-gpu plan clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[test,launchers]"
	@mkdir -p $(dir $@) mlruns && touch $@

# The embedded default: a tiny model built offline, trained on CPU, tracked in ./mlruns/mlflow.db.
run: install
	$(PYTHON) -m rlhf.run $(ARGS)

plan: install
	$(PYTHON) -m rlhf.run mode=plan $(ARGS)

# The default suite (CPU, no GPU tests).
test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-gpu:
	$(PYTHON) -m pytest -q -m gpu tests/gpu

clean:
	rm -rf outputs multirun .make
