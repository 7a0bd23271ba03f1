"""DeepSpeed's bare 'built successfully' print of its CPU communication op is dropped unless verbose
(rlhf/quiet.py stdout_without around engine setup); the lines around it still reach stdout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import torch
from rlhf.config.engine import EngineConfig
from rlhf.engines.deepspeed import build_frozen
from rlhf.engines.dist import destroy_distributed, free_port, init_distributed

init_distributed(0, 1, "127.0.0.1", free_port(), "cpu")
print("before", flush=True)
eng = build_frozen(torch.nn.Linear(4, 4), engine=EngineConfig(zero_stage=3), world_size=1, dtype="fp32", micro_batch=1)
print("after", flush=True)
destroy_distributed()
"""


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_deepspeed_op_print_only_when_verbose(verbose):
    env = {**os.environ, "RLHF_VERBOSE": verbose}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "before" in out.stdout and "after" in out.stdout
    assert ("built successfully" in out.stdout) == (verbose == "1"), out.stdout
