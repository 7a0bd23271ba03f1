#!/usr/bin/env bash
# Submit one run (or a sweep) to a standing Ray cluster with `ray job submit`: the working directory is uploaded,
# the driver runs on the cluster and joins it (RAY_ADDRESS is set there), logs stream back here.
#
#   launchers/ray_job.sh http://head:8265 algo=grpo model=qwen2_5_7b hw=h100x8
#   launchers/ray_job.sh http://head:8265 -cd sweeps -cn grpo_samples      # a sweep, points run one by one
#   RLHF_MLFLOW_URI=http://mlflow:5000 launchers/ray_job.sh http://head:8265 algo=dpo
#
# The first argument is the cluster's dashboard address; the rest go to `python -m rlhf.run`.
# Set RLHF_MLFLOW_URI to a tracking server the cluster reaches (a local sqlite store stays on the head node).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 <dashboard address, e.g. http://head:8265> [rlhf.run overrides...]" >&2
  exit 2
fi
ADDRESS=$1
shift
cd "$(dirname "$0")/.."

ENV_VARS="{\"TOKENIZERS_PARALLELISM\": \"false\", \"RAY_USAGE_STATS_ENABLED\": \"0\""
if [ -n "${RLHF_MLFLOW_URI:-}" ]; then
  ENV_VARS="$ENV_VARS, \"MLFLOW_TRACKING_URI\": \"$RLHF_MLFLOW_URI\""
fi
ENV_VARS="$ENV_VARS}"

# Large local folders never belong in the upload (Ray caps a working_dir at 500 MiB).
RUNTIME_ENV=$(cat <<JSON
{"working_dir": ".", "env_vars": $ENV_VARS,
 "excludes": [".git", "outputs", "multirun", "mlruns", ".rlhf_cache", "*.safetensors", "*.bin", "*.pt"]}
JSON
)
exec ray job submit --address "$ADDRESS" --runtime-env-json "$RUNTIME_ENV" -- python -m rlhf.run "$@"
