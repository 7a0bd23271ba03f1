import subprocess
import sys

import rlhf.algos as algos


def test_registries_are_exported():
    assert set(algos.ADVANTAGE_ESTIMATORS) >= algos.GROUP_ESTIMATORS | algos.ESTIMATOR_NEEDS_CRITIC
    for name in algos.__all__:
        assert getattr(algos, name)


def test_import_pulls_no_heavy_framework():
    code = (
        "import sys, rlhf.algos, rlhf.algos.sft, rlhf.algos.distill, rlhf.algos.reward, rlhf.algos.shaping, "
        "rlhf.algos.policy_loss, rlhf.algos.value_loss; "
        "print(','.join(m for m in ('ray', 'deepspeed', 'vllm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
