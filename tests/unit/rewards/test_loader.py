import numpy as np
import pytest
import torch

from rlhf.rewards.functions import math_exact_match
from rlhf.rewards.loader import (
    RewardError,
    RewardFieldError,
    RewardFunction,
    RewardLoadError,
    load_reward_function,
)

REWARD_FILE = """
import math

def strict(prompts, responses, answer):
    # No **kwargs: passing any other field would raise TypeError.
    return [1.0 if r == a else 0.0 for r, a in zip(responses, answer)]

def optional(prompts, responses, answer, bonus=None):
    extra = bonus if bonus is not None else [0.0] * len(responses)
    return [float(r == a) + b for r, a, b in zip(responses, answer, extra)]

def keyword_only(prompts, responses, *, weight):
    return [w for w in weight]

def everything(prompts, responses, **fields):
    return [float(len(fields))] * len(responses)

def star_args(*args, **kwargs):
    return [float(len(args))] * len(args[1])

def too_few(responses):
    return [0.0] * len(responses)

def as_numpy(prompts, responses):
    import numpy as np
    return np.arange(len(responses), dtype=np.float64)

def as_tensor(prompts, responses):
    import torch
    return torch.arange(len(responses), dtype=torch.int64)

def short(prompts, responses):
    return [0.0] * (len(responses) - 1)

def with_string(prompts, responses):
    return [1.0, "high", 0.0][: len(responses)]

def with_nan(prompts, responses):
    return [0.0, 1.0, math.nan][: len(responses)]

def with_inf(prompts, responses):
    return (math.inf,) * len(responses)

def as_matrix(prompts, responses):
    import torch
    return torch.zeros(len(responses), 2)

def as_generator(prompts, responses):
    return (0.0 for _ in responses)

class Scaled:
    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, prompts, responses):
        return [self.scale * len(r) for r in responses]

def make_scaled(scale):
    return Scaled(scale)

tripled = Scaled(3.0)

THRESHOLD = 3
"""


@pytest.fixture
def reward_file(tmp_path, monkeypatch):
    """rewards/my_rewards.py under a temporary cwd; returns the relative path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "my_rewards.py").write_text(REWARD_FILE)
    return "rewards/my_rewards.py"


def test_load_from_module_matches_direct_call():
    fn = load_reward_function("rlhf.rewards.functions:math_exact_match")
    assert isinstance(fn, RewardFunction) and fn.name == "math_exact_match"
    responses, answers = ["The answer is 19", "It is 8"], ["19", "7"]
    out = fn(["a", "b"], responses, {"answer": answers, "id": [0, 1]})
    assert out.dtype == torch.float32 and out.shape == (2,)
    assert out.tolist() == math_exact_match(["a", "b"], responses, answers) == [1.0, 0.0]


def test_load_factory_with_kwargs():
    fn = load_reward_function("rlhf.rewards.functions:regex_format", pattern=r"\d+")
    assert fn(["", ""], ["12", "x"]).tolist() == [1.0, 0.0]


def test_load_from_relative_file(reward_file):
    fn = load_reward_function(f"{reward_file}:strict")
    # The "id" column is not a parameter of `strict`, so it must not be passed.
    out = fn(["p", "q"], ["x", "y"], {"answer": ["x", "z"], "id": [1, 2]})
    assert out.tolist() == [1.0, 0.0]


def test_two_files_with_the_same_name_do_not_collide(tmp_path):
    for sub, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "reward.py").write_text(
            f"def f(prompts, responses):\n    return [{value}] * len(responses)\n"
        )
    fa = load_reward_function(f"{tmp_path / 'a' / 'reward.py'}:f")
    fb = load_reward_function(f"{tmp_path / 'b' / 'reward.py'}:f")
    assert fa([""], [""]).tolist() == [1.0] and fb([""], [""]).tolist() == [2.0]


def test_signature_driven_field_passing(reward_file):
    optional = load_reward_function(f"{reward_file}:optional")
    assert optional(["", ""], ["x", "y"], {"answer": ["x", "x"]}).tolist() == [1.0, 0.0]
    # With the optional field present it is passed: [1 + 0.5, 0 + 2].
    assert optional(["", ""], ["x", "y"], {"answer": ["x", "x"], "bonus": [0.5, 2.0]}).tolist() == [1.5, 2.0]
    keyword_only = load_reward_function(f"{reward_file}:keyword_only")
    assert keyword_only([""], [""], {"weight": [0.25], "other": ["z"]}).tolist() == [0.25]
    everything = load_reward_function(f"{reward_file}:everything")
    assert everything([""], [""], {"a": [1], "b": [2], "c": [3]}).tolist() == [3.0]
    star_args = load_reward_function(f"{reward_file}:star_args")
    assert star_args(["", ""], ["", ""], {"a": [1, 2]}).tolist() == [2.0, 2.0]  # called with 2 positionals


def test_missing_field_names_function_parameter_and_fields(reward_file):
    fn = load_reward_function(f"{reward_file}:strict")
    assert fn.required_fields == ["answer"]
    with pytest.raises(RewardFieldError, match=r"'strict' needs field\(s\) \['answer'\].*only \['id', 'label'\]"):
        fn([""], [""], {"label": ["x"], "id": [1]})


def test_misaligned_field(reward_file):
    fn = load_reward_function(f"{reward_file}:strict")
    with pytest.raises(RewardFieldError, match="field 'answer' has 1 values for 2 prompts"):
        fn(["", ""], ["", ""], {"answer": ["x"]})


def test_class_and_factory_targets(reward_file):
    # A class is instantiated (default scale 1.0), a factory is called with the kwargs.
    assert load_reward_function(f"{reward_file}:Scaled")([""], ["abc"]).tolist() == [3.0]
    assert load_reward_function(f"{reward_file}:Scaled", scale=2.0)([""], ["abc"]).tolist() == [6.0]
    assert load_reward_function(f"{reward_file}:make_scaled", scale=0.5)([""], ["abcd"]).tolist() == [2.0]
    # A callable instance is used as it is; its name is the attribute's.
    tripled = load_reward_function(f"{reward_file}:tripled")
    assert tripled.name == "tripled" and tripled([""], ["ab"]).tolist() == [6.0]


def test_numpy_and_tensor_outputs(reward_file):
    assert load_reward_function(f"{reward_file}:as_numpy")(["", "", ""], ["", "", ""]).tolist() == [0.0, 1.0, 2.0]
    out = load_reward_function(f"{reward_file}:as_tensor")(["", ""], ["", ""])
    assert out.dtype == torch.float32 and out.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("short", r"'short' returned 2 rewards for 3 responses"),
        ("with_string", r"'with_string' returned a non-numeric value at index 1: 'high' \(prompt 'p1'\)"),
        ("with_nan", r"'with_nan' returned NaN at index 2: nan \(prompt 'p2'\)"),
        ("with_inf", r"'with_inf' returned an infinite value .* at index 0: inf \(prompt 'p0'\)"),
        ("as_matrix", r"'as_matrix' returned a tensor of shape \(3, 2\); expected 1-D \[3\]"),
        ("as_generator", r"'as_generator' returned generator; expected a list"),
    ],
)
def test_bad_outputs(reward_file, name, pattern):
    fn = load_reward_function(f"{reward_file}:{name}")
    with pytest.raises(RewardError, match=pattern):
        fn(["p0", "p1", "p2"], ["a", "b", "c"])


def test_bad_output_truncates_long_prompt(reward_file):
    fn = load_reward_function(f"{reward_file}:with_nan")
    prompt = "x" * 1000
    with pytest.raises(RewardError) as info:
        fn(["a", "b", prompt], ["", "", ""])
    message = str(info.value)
    assert "x" * 200 + "..." in message and "x" * 201 not in message


def test_numpy_object_array_is_rejected():
    fn = RewardFunction(lambda p, r: np.array([1.0, None], dtype=object), name="objects")
    with pytest.raises(RewardError, match=r"'objects' returned a non-numeric value at index 1: None"):
        fn(["a", "b"], ["", ""])


def test_float64_overflow_is_reported_as_infinite():
    fn = RewardFunction(lambda p, r: [1e300], name="huge")  # finite in float64, inf in float32
    with pytest.raises(RewardError, match="beyond float32 range"):
        fn([""], [""])


def test_prompts_responses_length_mismatch():
    fn = RewardFunction(lambda p, r: [0.0] * len(r), name="n")
    with pytest.raises(RewardError, match="2 prompts and 1 responses"):
        fn(["a", "b"], ["x"])


def test_error_missing_module():
    with pytest.raises(RewardLoadError, match=r"reward module 'no_such_pkg_q7.mod' not found.*sys.path"):
        load_reward_function("no_such_pkg_q7.mod:fn")


def test_error_missing_dependency_inside_file(tmp_path):
    path = tmp_path / "needs_dep.py"
    path.write_text("import no_such_dependency_q7\n")
    with pytest.raises(RewardLoadError, match=r"importing reward file .*needs_dep.py failed: ModuleNotFoundError"):
        load_reward_function(f"{path}:f")


def test_error_missing_attribute_lists_callables(reward_file):
    with pytest.raises(RewardLoadError, match=r"has no attribute 'stict'.*\[Scaled, as_generator, .*strict.*\]"):
        load_reward_function(f"{reward_file}:stict")


def test_error_file_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RewardLoadError, match=rf"reward file not found: {tmp_path}/nope/r.py .*{tmp_path}"):
        load_reward_function("nope/r.py:f")


def test_error_not_callable(reward_file):
    with pytest.raises(RewardLoadError, match=r":THRESHOLD' is not callable \(type int\)"):
        load_reward_function(f"{reward_file}:THRESHOLD")


def test_error_kwargs_for_non_factory(reward_file):
    with pytest.raises(RewardLoadError, match=r"calling factory .*:strict.* with \['scale'\] failed"):
        load_reward_function(f"{reward_file}:strict", scale=2.0)


def test_error_wrong_signature(reward_file):
    with pytest.raises(RewardLoadError, match=r"'too_few' has signature \(responses\); it must accept"):
        load_reward_function(f"{reward_file}:too_few")


@pytest.mark.parametrize("spec", ["no_colon", ":fn", "module:"])
def test_error_malformed_spec(spec):
    with pytest.raises(RewardLoadError, match="must look like 'package.module:function'"):
        load_reward_function(spec)


def test_reward_error_hierarchy():
    # Callers can catch every reward failure with one except clause.
    assert issubclass(RewardLoadError, RewardError) and issubclass(RewardFieldError, RewardError)


def test_error_factory_returns_non_callable(tmp_path):
    path = tmp_path / "factory.py"
    path.write_text("def make(value):\n    return value\n")
    with pytest.raises(RewardLoadError, match=r"factory .*:make' returned a non-callable \(type float\)"):
        load_reward_function(f"{path}:make", value=1.0)


def test_a_reward_function_that_raises_is_named_with_its_batch(tmp_path):
    from rlhf.rewards.loader import RewardError, load_reward_function

    script = tmp_path / "my_reward.py"
    script.write_text("def score(prompts, responses, **kw):\n    return [1.0 / len(r) for r in responses]\n")
    fn = load_reward_function(f"{script}:score")
    assert fn(["q", "q"], ["ab", "abcd"]).tolist() == [0.5, 0.25]
    with pytest.raises(RewardError, match=r"reward function '.*score' raised ZeroDivisionError: .*2 responses.*''"):
        fn(["q", "q"], ["", "x"])
