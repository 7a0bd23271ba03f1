"""Load a user reward function from a spec string and wrap it so every call is checked.

    fn = load_reward_function("rlhf.rewards.functions:math_exact_match")
    fn = load_reward_function("my_rewards.py:score")                      # file, relative to the cwd
    fn = load_reward_function("rlhf.rewards.functions:regex_format", pattern=r"\\d+")   # factory + kwargs
    rewards = fn(prompts, responses, {"answer": ["19", "7"]})              # torch.float32 [B]

The wrapped function follows the batched contract in `rlhf/rewards/README.md`; `RewardFunction` passes only the
data fields the function declares and rejects outputs of the wrong length, non-numbers, NaN and inf with an
error naming the function, the row and its prompt.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

__all__ = [
    "RewardError",
    "RewardFieldError",
    "RewardFunction",
    "RewardLoadError",
    "load_reward_function",
    "to_reward_tensor",
]

_PROMPT_PREVIEW_CHARS = 200


class RewardError(RuntimeError):
    """A reward function (local or remote) could not produce valid rewards."""


class RewardFieldError(RewardError):
    """The data rows lack a field the reward function needs, or a field is not aligned with the prompts."""


class RewardLoadError(RewardError):
    """A reward spec could not be resolved to a callable with the reward signature."""


def _preview(text: object) -> str:
    text = str(text)
    return repr(text if len(text) <= _PROMPT_PREVIEW_CHARS else text[:_PROMPT_PREVIEW_CHARS] + "...")


def _bad_value_error(name: str, index: int, value: object, prompts: Sequence[str], what: str) -> RewardError:
    prompt = _preview(prompts[index]) if index < len(prompts) else "<no prompt>"
    return RewardError(
        f"reward function '{name}' returned {what} at index {index}: {value!r} (prompt {prompt}). "
        "Rewards must be finite numbers; fix the function or guard the case that produced this value."
    )


def to_reward_tensor(values: object, name: str, prompts: Sequence[str]) -> torch.Tensor:
    """Validate a reward function's output and convert it to a float32 tensor.

    Args:
        values: list, tuple, numpy array or 1-D torch tensor, one number per prompt.
        name: the reward function's name, for error messages.
        prompts: [B] prompts, to show the prompt of the first bad value.
    Returns:
        [B] float32 CPU tensor.
    Raises:
        RewardError: wrong type, wrong length, a non-numeric value, NaN or inf (names the first bad index).
    """
    batch = len(prompts)
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise RewardError(
                f"reward function '{name}' returned a tensor of shape {tuple(values.shape)}; expected 1-D [{batch}]"
            )
        if values.is_complex():
            raise _bad_value_error(name, 0, values[0].item() if len(values) else None, prompts, "a complex value")
        out = values.detach().to(device="cpu", dtype=torch.float32)
    elif isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise RewardError(
                f"reward function '{name}' returned an array of shape {values.shape}; expected 1-D [{batch}]"
            )
        if values.dtype.kind not in "biuf":
            bad = next((i for i, v in enumerate(values.tolist()) if not _is_real(v)), 0)
            raise _bad_value_error(name, bad, values[bad] if len(values) else None, prompts, "a non-numeric value")
        out = torch.from_numpy(values.astype(np.float32, copy=True))
    elif isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            if not _is_real(v):
                raise _bad_value_error(name, i, v, prompts, "a non-numeric value")
        out = torch.tensor([float(v) for v in values], dtype=torch.float32)
    else:
        raise RewardError(
            f"reward function '{name}' returned {type(values).__name__}; expected a list, tuple, numpy array or "
            f"1-D torch tensor of {batch} floats"
        )
    if out.numel() != batch:
        raise RewardError(
            f"reward function '{name}' returned {out.numel()} rewards for {batch} responses; it must return "
            "exactly one reward per response, in order"
        )
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        raw = values[index]
        raw = raw.item() if hasattr(raw, "item") else raw
        what = "NaN" if math.isnan(float(out[index])) else "an infinite value (or one beyond float32 range)"
        raise _bad_value_error(name, index, raw, prompts, what)
    return out


def _is_real(value: object) -> bool:
    """True for ints, floats, bools and numpy/torch scalars; False for strings, None, containers."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real)


class RewardFunction:
    """A reward callable with a checked calling convention.

    Calls `fn(prompts, responses, **selected_fields)` where `selected_fields` holds the data fields that `fn`
    declares as parameters (all of them if it takes `**kwargs`). A required parameter with no matching field
    raises `RewardFieldError` naming the function, the parameter and the available fields.

    Args:
        fn: `fn(prompts, responses, **fields) -> Sequence[float]`; at least 2 positional parameters or `*args`.
        name: shown in errors and metric names; defaults to the function's `__name__`.
    """

    def __init__(self, fn: Callable[..., object], name: str | None = None):
        if not callable(fn):
            raise RewardLoadError(f"reward function {name or fn!r} is not callable (type {type(fn).__name__})")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self._inspect_signature()

    def _inspect_signature(self) -> None:
        try:
            params = list(inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):
            # Some builtins and C extensions expose no signature: pass prompts and responses only.
            self._field_params, self._required, self._takes_all = [], [], False
            return
        kinds = inspect.Parameter
        positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
        var_args = any(p.kind == kinds.VAR_POSITIONAL for p in params)
        if len(positional) < 2 and not var_args:
            raise RewardLoadError(
                f"reward function '{self.name}' has signature {inspect.signature(self.fn)}; it must accept "
                "(prompts, responses, **fields): at least two positional parameters"
            )
        rest = positional[2:] + [p for p in params if p.kind == kinds.KEYWORD_ONLY]
        stuck = [p.name for p in rest if p.kind == kinds.POSITIONAL_ONLY and p.default is p.empty]
        if stuck:
            raise RewardLoadError(
                f"reward function '{self.name}' has required positional-only parameters {stuck} after "
                "(prompts, responses); data fields are passed by name, so make them regular parameters"
            )
        named = [p for p in rest if p.kind != kinds.POSITIONAL_ONLY]
        self._field_params = [p.name for p in named]
        self._required = [p.name for p in named if p.default is p.empty]
        self._takes_all = any(p.kind == kinds.VAR_KEYWORD for p in params)

    @property
    def required_fields(self) -> list[str]:
        """Data fields the function cannot run without."""
        return list(self._required)

    def select_fields(self, fields: Mapping[str, Sequence[object]], batch: int) -> dict[str, Sequence[object]]:
        """The subset of `fields` this function accepts, after checking presence and alignment."""
        missing = [name for name in self._required if name not in fields]
        if missing:
            raise RewardFieldError(
                f"reward function '{self.name}' needs field(s) {missing} but the data rows have only "
                f"{sorted(fields)}. Add the column(s) to the data set (data `fields` config) or give the "
                "parameter(s) a default."
            )
        selected = {k: v for k, v in fields.items() if self._takes_all or k in self._field_params}
        for key, column in selected.items():
            if not hasattr(column, "__len__") or len(column) != batch:
                size = len(column) if hasattr(column, "__len__") else type(column).__name__
                raise RewardFieldError(
                    f"reward function '{self.name}': field '{key}' has {size} values for {batch} prompts; every "
                    "field must be a list aligned with the prompts"
                )
        return selected

    def __call__(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        fields: Mapping[str, Sequence[object]] | None = None,
    ) -> torch.Tensor:
        """Score a batch. prompts, responses and every field: [B]. Returns float32 [B]."""
        if len(prompts) != len(responses):
            raise RewardError(
                f"reward function '{self.name}' called with {len(prompts)} prompts and {len(responses)} responses"
            )
        selected = self.select_fields(fields or {}, len(prompts))
        try:
            values = self.fn(list(prompts), list(responses), **selected)
        except RewardError:
            raise
        except Exception as exc:
            # The run's traceback ends deep in the loop; the user needs the function and the batch at fault.
            raise RewardError(
                f"reward function '{self.name}' raised {type(exc).__name__}: {exc} (scoring {len(prompts)} "
                f"responses, fields {sorted(selected)}; first response {str(responses[0])[:80]!r}). Fix the "
                "function, or run it on these rows by hand to see where it fails"
            ) from exc
        return to_reward_tensor(values, self.name, prompts)

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r})"


def _parse_spec(spec: str) -> tuple[str, str]:
    target, sep, attr = spec.strip().rpartition(":")
    if not sep or not target or not attr:
        raise RewardLoadError(
            f"reward spec {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'"
        )
    return target, attr


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_file(target: str, spec: str) -> ModuleType:
    path = Path(target).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not path.is_file():
        raise RewardLoadError(
            f"reward file not found: {path} (from spec {spec!r}, relative paths resolve against the working "
            f"directory {Path.cwd()})"
        )
    # One module name per file path, so two files both called reward.py do not replace each other.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"_rlhf_reward_file_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardLoadError(f"cannot import reward file {path}: Python does not recognise it as a module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # registered first so dataclasses and pickling inside it can find it
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise RewardLoadError(f"importing reward file {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(target: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            head = [p or "<cwd>" for p in sys.path[:6]]
            raise RewardLoadError(
                f"reward module {target!r} not found (spec {spec!r}). Python searched sys.path starting with "
                f"{head}: install the package, run from the directory that contains it or add that directory "
                "to PYTHONPATH; for a file use 'path/to/file.py:function'."
            ) from exc
        raise RewardLoadError(
            f"importing reward module {target!r} failed: it imports {exc.name!r}, which is not installed"
        ) from exc
    except Exception as exc:
        raise RewardLoadError(f"importing reward module {target!r} failed: {type(exc).__name__}: {exc}") from exc


def _public_callables(module: ModuleType) -> list[str]:
    return sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))


def load_reward_function(spec: str, **kwargs: object) -> RewardFunction:
    """Resolve `spec` to a reward callable and wrap it in a `RewardFunction`.

    Args:
        spec: "package.module:function" or "path/to/file.py:function" (relative paths resolve against the cwd;
            the file is imported under a module name unique to its path). `function` may be dotted
            ("module:Class.method").
        kwargs: if given, the target is a factory: `target(**kwargs)` must return the reward callable. A class
            is always instantiated (with `kwargs`, possibly none), so callable classes work as targets.
    Returns:
        RewardFunction named after the last part of `function`.
    Raises:
        RewardLoadError: malformed spec, missing module/file/attribute, not callable, wrong signature.
    """
    target, attr = _parse_spec(spec)
    module = _import_file(target, spec) if _is_file_target(target) else _import_module(target, spec)
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = _public_callables(module)
            listing = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
            raise RewardLoadError(
                f"{target!r} has no attribute {attr!r} (spec {spec!r}). Callables it defines: [{listing}]"
            )
        obj = getattr(obj, part)
    name = attr.rsplit(".", 1)[-1]
    if kwargs or inspect.isclass(obj):
        if not callable(obj):
            raise RewardLoadError(
                f"{spec!r} is not callable (type {type(obj).__name__}); keyword arguments {sorted(kwargs)} need a "
                "factory or class"
            )
        try:
            obj = obj(**kwargs)  # type: ignore[operator]
        except TypeError as exc:
            raise RewardLoadError(f"calling factory {spec!r} with {sorted(kwargs)} failed: {exc}") from exc
        if not callable(obj):
            raise RewardLoadError(f"factory {spec!r} returned a non-callable (type {type(obj).__name__})")
    elif not callable(obj):
        raise RewardLoadError(
            f"{spec!r} is not callable (type {type(obj).__name__}); point the spec at a function, a class or a "
            "callable instance"
        )
    return RewardFunction(obj, name=name)  # type: ignore[arg-type]
