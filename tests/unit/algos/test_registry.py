"""The algorithm registry: every row names a schema its config file really uses, a controller, an objective the
trainer knows, and a metric with its direction."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhf.algos.registry import ALGORITHMS, CONTROLLERS, get_algo

CONF = Path(__file__).resolve().parents[3] / "conf" / "algo"


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_row_matches_its_config_file_and_its_controller(name):
    from rlhf.config.run import SCHEMAS

    spec = ALGORITHMS[name]
    assert spec.schema in SCHEMAS["algo"]
    defaults = yaml.safe_load((CONF / f"{name}.yaml").read_text())["defaults"]
    assert f"/schema/algo/{spec.schema}@_here_" in defaults
    assert spec.controller == CONTROLLERS[spec.family]
    assert spec.metric.startswith("eval/")
    if spec.family == "offline":
        from rlhf.training.objectives import OBJECTIVES

        assert spec.objective in OBJECTIVES
    elif spec.family == "iterative":
        # Each round trains an offline algorithm on what it generated; the run is judged by held-out reward.
        assert ALGORITHMS[spec.round_algo].family == "offline"
        assert spec.objective == ALGORITHMS[spec.round_algo].objective and spec.task == "prompt"
        assert (spec.metric, spec.higher_is_better) == ("eval/reward_mean", True)
    else:
        assert (spec.objective, spec.metric, spec.higher_is_better) == ("policy", "eval/reward_mean", True)


def test_losses_are_minimized_and_accuracies_maximized():
    assert not get_algo("sft").higher_is_better and get_algo("dpo").higher_is_better
    assert get_algo("rm").metric == "eval/accuracy"
    with pytest.raises(ValueError, match="valid: .*dpo"):
        get_algo("dpp")
