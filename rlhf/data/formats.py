"""Row formats of public data sets: one small normalizer each, a detector, and the registry (FORMATS).

A normalizer turns a raw row into the canonical example the tokenizers of `rlhf.data.templates` take:

    {"prompt": str | messages | None, "response": str | messages | None, "chosen": ..., "rejected": ...,
     "label": bool, "steps": [str], "labels": [...], "text": str | messages, "fields": {name: value}}

(only the keys a task needs). `fields` go to reward functions: every scalar column of the row plus what the
format derives (GSM8K: `answer` is the text after '####', `solution` the whole worked answer).

Each format serves some tasks (pair, sft, prompt, unpaired, pretrain, prm); a format that cannot serve the
algorithm's task is refused with the algorithms it can serve. `detect_format` scores every format on the first
rows: the formats matching the most rows win, then those needing the most keys (UltraFeedback rows also hold a
`messages` column; Alpaca rows also a `text` column); a tie is refused, naming the candidates.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from rlhf.data.errors import DataError, RowError

TASKS = ("sft", "pretrain", "pair", "prompt", "unpaired", "prm")
# Task -> the algorithms that train on it (for messages; rlhf/algos/registry.py is the source of truth).
TASK_ALGOS = {
    "sft": "sft",
    "pretrain": "pretrain",
    "pair": "dpo, ipo, cdpo, rm",
    "prompt": "grpo, ppo, rloo, reinforce_pp, reinforce_pp_baseline, dr_grpo",
    "unpaired": "kto",
    "prm": "a process reward model",
}
# ShareGPT speaker names -> chat roles (data.role_map adds or replaces entries).
DEFAULT_ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
}
HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
GSM8K_MARK = "####"

Messages = List[Dict[str, str]]


@dataclass(frozen=True)
class FormatOptions:
    """Per-source settings a normalizer needs: key renames, prompt template, ShareGPT role map, fields."""

    keys: Mapping[str, Optional[str]] = field(default_factory=dict)  # config field (input_key...) -> row key
    prompt_template: Optional[str] = None
    role_map: Mapping[str, str] = field(default_factory=dict)
    fields: Sequence[str] = ()


@dataclass(frozen=True)
class Format:
    name: str
    summary: str  # one line, for the README and messages
    tasks: Tuple[str, ...]
    # Config field -> the row key this format reads for it (input_key -> "instruction").
    keys: Dict[str, str]
    # Row keys a row must have (with the right types) to be of this format; their number orders candidates.
    required: Tuple[str, ...]
    match: Callable[[Mapping[str, Any], FormatOptions], bool]
    normalize: Callable[[Mapping[str, Any], str, FormatOptions], Dict[str, Any]]
    hub: Optional[str] = None  # the public data set of this shape
    example: Dict[str, Any] = field(default_factory=dict)
    prompt_template: Optional[str] = None


# ------------------------------------------------------------------------------------------------- values


def _is_messages(value: Any, content: str = "content", role: str = "role") -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get(role), str) and isinstance(m.get(content), str) for m in value)
    )


def _is_text(value: Any) -> bool:
    return (isinstance(value, str) and bool(value.strip())) or _is_messages(value)


_KIND_TEXT = {
    "str": "a non-empty string",
    "text": "a non-empty string or a list of {role, content} messages",
    "messages": "a non-empty list of {role, content} messages",
    "sharegpt": "a non-empty list of {from, value} turns",
    "label": "a label (true/false or 1/0)",
    "str_list": "a non-empty list of non-empty strings",
    "label_list": "a list of labels (true/false, 1/0 or a float in [0, 1])",
}
_KIND_CHECK: Dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str) and bool(v.strip()),
    "text": _is_text,
    "messages": _is_messages,
    "sharegpt": lambda v: _is_messages(v, "value", "from"),
    "label": lambda v: isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)),
    "str_list": lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) and s.strip() for s in v),
    "label_list": lambda v: (
        isinstance(v, list) and bool(v) and all(isinstance(x, (bool, int, float)) and 0 <= float(x) <= 1 for x in v)
    ),
}


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        if not value:
            return "an empty list"
        return f"a list of {type(value[0]).__name__}" + (
            f" with keys {sorted(value[0])}" if isinstance(value[0], dict) else ""
        )
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}"
    return f"a value of type {type(value).__name__}"


def get(row: Mapping[str, Any], key: str, kind: str, what: str = "") -> Any:
    """row[key] checked to be of `kind`; RowError naming the key, the expected type and a key that has it."""
    if key not in row or row[key] is None:
        present = sorted(k for k in row if not k.startswith("_"))
        raise RowError(
            f"missing key '{key}'",
            key=key,
            detail=("value is null" if key in row else f"the row has keys {present}") + what,
        )
    value = row[key]
    if _KIND_CHECK[kind](value):
        return value
    if isinstance(value, str) and not value.strip():
        raise RowError(f"empty string at key '{key}'", key=key, detail=f"expected {_KIND_TEXT[kind]}")
    holders = [k for k, v in row.items() if k != key and not k.startswith("_") and _KIND_CHECK[kind](v)]
    hint = f"; key '{holders[0]}' holds {_KIND_TEXT[kind]}" if holders else ""
    raise RowError(
        f"wrong type at key '{key}'", key=key, detail=f"expected {_KIND_TEXT[kind]}, got {_describe(value)}{hint}"
    )


def _has(row: Mapping[str, Any], key: str, kind: str) -> bool:
    return key in row and row[key] is not None and _KIND_CHECK[kind](row[key])


def _key(fmt_keys: Mapping[str, str], opts: FormatOptions, config_field: str) -> str:
    return opts.keys.get(config_field) or fmt_keys[config_field]


def scalar_fields(row: Mapping[str, Any]) -> Dict[str, Any]:
    """Every top-level scalar column of a row (strings, numbers, bools): what reward functions may read."""
    return {
        k: v for k, v in row.items() if not k.startswith("_") and (v is None or isinstance(v, (str, int, float, bool)))
    }


def _fields(row: Mapping[str, Any], opts: FormatOptions, derived: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    derived = derived or {}
    if opts.fields:
        return {f: derived[f] if f in derived else get_any(row, f) for f in opts.fields}
    return {**scalar_fields(row), **derived}


def get_any(row: Mapping[str, Any], key: str) -> Any:
    if key not in row:
        present = sorted(k for k in row if not k.startswith("_"))
        raise RowError(
            f"missing key '{key}'", key=key, detail=f"listed in data.sources.<name>.fields; the row has keys {present}"
        )
    return row[key]


def prompt_until_last_assistant(messages: Messages) -> Messages:
    """The conversation before its last assistant turn (the whole conversation when it has none)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return list(messages[:last])


def _no_task(fmt: str, task: str) -> RowError:
    return RowError(f"format {fmt} cannot serve task {task}")


# ---------------------------------------------------------------------------------------------- templates


def apply_prompt_template(template: Optional[str], values: Mapping[str, Any], prompt: Any = None) -> Any:
    """Fill a prompt template with named row fields (`{instruction}`, `{input}`; `{}` or `{prompt}` is the
    prompt itself). A blank field drops together with the literal text before it (after it, when it comes
    first), so "{instruction}\\n\\n{input}" with no input is just the instruction. Message prompts are kept.
    """
    if not template or isinstance(prompt, list):
        return prompt
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(
            f"prompt template {template!r} is not a format string ({e})",
            key="data.prompt_template",
            hint="write e.g. '{instruction}\\n\\n{input}' (double literal braces: '{{')",
        ) from e
    pieces: List[Tuple[str, Optional[str]]] = []  # (literal before, value or None when no field)
    for literal, name, spec, _conv in parts:
        if name is None:
            pieces.append((literal, None))
            continue
        key = name or "prompt"
        if key == "prompt" and prompt is not None:
            value = prompt
        elif key in values:
            value = values[key]
        else:
            raise RowError(
                f"missing key '{key}'",
                key=key,
                detail=f"named by the prompt template {template!r}; the row has keys "
                f"{sorted(k for k in values if not k.startswith('_'))}",
            )
        text = "" if value is None else str(value)
        pieces.append((literal, format(text, spec) if spec else text))
    out: List[str] = []
    drop_next_literal = False
    for i, (literal, value) in enumerate(pieces):
        if drop_next_literal:
            literal, drop_next_literal = "", False
        if value is not None and not value.strip():
            if any(p[1] is not None and p[1].strip() for p in pieces[:i]):
                literal = ""  # drop the separator before a blank field
            else:
                drop_next_literal = True  # a blank first field takes the separator after it
            value = ""
        out.append(literal + (value or ""))
    return "".join(out)


# --------------------------------------------------------------------------------------------- normalizers


def parse_hh(text: str) -> Messages:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}]; RowError when there is no turn."""
    marks = list(HH_MARKER.finditer(text))
    if not marks or marks[0].start() > 0 and text[: marks[0].start()].strip():
        raise RowError("not an HH-RLHF conversation", detail="expected '\\n\\nHuman: ...\\n\\nAssistant: ...' turns")
    messages = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = "user" if m.group(1) == "Human" else "assistant"
        messages.append({"role": role, "content": text[m.end() : end].strip()})
    return messages


def _hh_match(row, opts):
    c, r = opts.keys.get("chosen_key") or "chosen", opts.keys.get("rejected_key") or "rejected"
    return _has(row, c, "str") and _has(row, r, "str") and "Human:" in row[c] and "Assistant:" in row[c]


def _hh_normalize(row, task, opts):
    ck, rk = _key(HH.keys, opts, "chosen_key"), _key(HH.keys, opts, "rejected_key")
    chosen = parse_hh(get(row, ck, "str"))
    fields = _fields(row, opts)
    if task == "sft":
        return {"prompt": chosen, "response": None, "fields": fields}
    prompt = prompt_until_last_assistant(chosen)
    if not prompt or len(prompt) == len(chosen):
        raise RowError("no Assistant turn", key=ck, detail="an HH-RLHF conversation ends with an Assistant turn")
    if task == "prompt":
        return {"prompt": prompt, "fields": fields}
    if task != "pair":
        raise _no_task("hh_rlhf", task)
    rejected = parse_hh(get(row, rk, "str"))
    if prompt_until_last_assistant(rejected) != prompt:
        raise RowError(
            "chosen and rejected do not share the conversation before the last Assistant turn",
            key=rk,
            detail="HH-RLHF pairs differ only in their last Assistant turn",
        )
    return {"prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :], "fields": fields}


def _conv_pair_match(row, opts):
    c, r = opts.keys.get("chosen_key") or "chosen", opts.keys.get("rejected_key") or "rejected"
    return (
        _has(row, c, "messages")
        and _has(row, r, "messages")
        and row[c][0]["role"] != "assistant"
        and row[r][0]["role"] != "assistant"
    )


def _conv_pair_normalize(row, task, opts):
    from rlhf.data.templates import split_shared_prefix

    ck, rk = _key(ULTRAFEEDBACK.keys, opts, "chosen_key"), _key(ULTRAFEEDBACK.keys, opts, "rejected_key")
    chosen = get(row, ck, "messages")
    fields = _fields(row, opts)
    if task == "sft":
        return {"prompt": chosen, "response": None, "fields": fields}
    if task == "prompt":
        pk = _key(ULTRAFEEDBACK.keys, opts, "input_key")
        prompt = row[pk] if _has(row, pk, "text") else prompt_until_last_assistant(chosen)
        return {"prompt": prompt, "fields": fields}
    if task != "pair":
        raise _no_task("ultrafeedback", task)
    prompt, c, r = split_shared_prefix(chosen, get(row, rk, "messages"))
    return {"prompt": prompt, "chosen": c, "rejected": r, "fields": fields}


def _sharegpt_messages(row, opts) -> Messages:
    key = _key(SHAREGPT.keys, opts, "input_key")
    turns = get(row, key, "sharegpt")
    roles = {**DEFAULT_ROLE_MAP, **{str(k).lower(): v for k, v in opts.role_map.items()}}
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn["from"]
        role = roles.get(speaker.lower())
        if role is None:
            raise RowError(
                f"unknown ShareGPT speaker '{speaker}'",
                key=key,
                detail=f"turn {i}; map it with +data.role_map.{speaker}=<user|assistant|system|tool>",
            )
        messages.append({"role": role, "content": turn["value"]})
    return messages


def _conversation_normalize(get_messages, fmt):
    def normalize(row, task, opts):
        messages = get_messages(row, opts)
        fields = _fields(row, opts)
        if task in ("sft", "pretrain"):
            if task == "sft" and not any(m["role"] == "assistant" for m in messages):
                raise RowError("conversation has no assistant turn", detail="nothing to train on")
            return {"prompt": messages, "response": None, "text": messages, "fields": fields}
        if task == "prompt":
            prompt = prompt_until_last_assistant(messages)
            if not prompt:
                raise RowError("conversation starts with an assistant turn", detail="there is no prompt")
            return {"prompt": prompt, "fields": fields}
        raise _no_task(fmt, task)

    return normalize


def _messages_of(row, opts):
    return get(row, _key(MESSAGES.keys, opts, "input_key"), "messages")


def _alpaca_prompt(row, opts):
    ik = _key(ALPACA.keys, opts, "input_key")
    values = {**scalar_fields(row), "instruction": get(row, ik, "str")}
    values.setdefault("input", "")
    return apply_prompt_template(opts.prompt_template or ALPACA.prompt_template, values)


def _alpaca_normalize(row, task, opts):
    prompt = _alpaca_prompt(row, opts)
    fields = _fields(row, opts)
    if task == "prompt":
        return {"prompt": prompt, "fields": fields}
    output = get(row, _key(ALPACA.keys, opts, "output_key"), "str")
    if task == "sft":
        return {"prompt": prompt, "response": output, "fields": fields}
    if task == "pretrain":
        return {"text": f"{prompt}\n\n{output}", "fields": fields}
    raise _no_task("alpaca", task)


def _templated(row, opts, prompt):
    return apply_prompt_template(opts.prompt_template, scalar_fields(row), prompt)


def _prompt_response_normalize(row, task, opts):
    prompt = _templated(row, opts, get(row, _key(PROMPT_RESPONSE.keys, opts, "input_key"), "text"))
    fields = _fields(row, opts)
    if task == "prompt":
        return {"prompt": prompt, "fields": fields}
    key = _response_key(row, opts)
    either = "" if opts.keys.get("output_key") else "; the response is read from 'response' or 'completion'"
    response = get(row, key, "text", either)
    if task == "sft":
        return {"prompt": prompt, "response": response, "fields": fields}
    raise _no_task("prompt_response", task)


def _response_key(row, opts) -> str:
    if opts.keys.get("output_key"):
        return opts.keys["output_key"]
    return "completion" if "completion" in row and "response" not in row else "response"


def _pairs_match(row, opts):
    p = opts.keys.get("input_key") or "prompt"
    c, r = opts.keys.get("chosen_key") or "chosen", opts.keys.get("rejected_key") or "rejected"

    def response(v):
        return (isinstance(v, str) and bool(v.strip())) or (_is_messages(v) and v[0]["role"] == "assistant")

    return _has(row, p, "text") and response(row.get(c)) and response(row.get(r))


def _pairs_normalize(row, task, opts):
    prompt = _templated(row, opts, get(row, _key(PAIRS.keys, opts, "input_key"), "text"))
    chosen = get(row, _key(PAIRS.keys, opts, "chosen_key"), "text")
    fields = _fields(row, opts)
    if task == "prompt":
        return {"prompt": prompt, "fields": fields}
    if task == "sft":
        return {"prompt": prompt, "response": chosen, "fields": fields}
    if task == "pair":
        return {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": get(row, _key(PAIRS.keys, opts, "rejected_key"), "text"),
            "fields": fields,
        }
    raise _no_task("pairs", task)


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after the last '####' (commas in numbers removed)."""
    return solution.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")


def _gsm8k_normalize(row, task, opts):
    question = _templated(row, opts, get(row, _key(GSM8K.keys, opts, "input_key"), "str"))
    ak = _key(GSM8K.keys, opts, "output_key")
    solution = get(row, ak, "str")
    if GSM8K_MARK not in solution:
        raise RowError(f"no '{GSM8K_MARK}' in key '{ak}'", key=ak, detail="a GSM8K answer ends with '#### <number>'")
    fields = _fields(row, opts, {"answer": gsm8k_answer(solution), "solution": solution})
    if task == "prompt":
        return {"prompt": question, "fields": fields}
    if task == "sft":
        return {"prompt": question, "response": solution, "fields": fields}
    raise _no_task("gsm8k", task)


_COLLECTION_KEYS = ("context_messages", "input_messages", "prompt_messages")


def _collection_key(row, opts) -> str:
    if opts.keys.get("input_key"):
        return opts.keys["input_key"]
    return next((k for k in _COLLECTION_KEYS if k in row), "context_messages")


def _collection_normalize(row, task, opts):
    if task != "prompt":
        raise _no_task("prompt_collection", task)
    messages = get(row, _collection_key(row, opts), "messages")
    derived = {}
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and "ground_truth" in reward_model:  # the verl spelling of the answer
        truth = reward_model["ground_truth"]
        derived["answer"] = truth[0] if isinstance(truth, list) and truth else truth
    return {"prompt": prompt_until_last_assistant(messages) or messages, "fields": _fields(row, opts, derived)}


def _prompt_only_normalize(row, task, opts):
    if task != "prompt":
        raise _no_task("prompt", task)
    prompt = _templated(row, opts, get(row, _key(PROMPT_ONLY.keys, opts, "input_key"), "text"))
    return {"prompt": prompt, "fields": _fields(row, opts)}


def _kto_normalize(row, task, opts):
    prompt = _templated(row, opts, get(row, _key(KTO.keys, opts, "input_key"), "text"))
    completion = get(row, _key(KTO.keys, opts, "output_key"), "text")
    fields = _fields(row, opts)
    if task == "unpaired":
        return {
            "prompt": prompt,
            "response": completion,
            "label": bool(get(row, _key(KTO.keys, opts, "label_key"), "label")),
            "fields": fields,
        }
    if task == "prompt":
        return {"prompt": prompt, "fields": fields}
    raise _no_task("kto", task)


def _text_normalize(row, task, opts):
    if task != "pretrain":
        raise _no_task("text", task)
    return {"text": get(row, _key(TEXT.keys, opts, "input_key"), "text"), "fields": {}}


def _prm_steps_key(row, opts) -> str:
    return opts.keys.get("output_key") or ("completions" if "completions" in row and "steps" not in row else "steps")


def _prm_normalize(row, task, opts):
    prompt = get(row, _key(PRM.keys, opts, "input_key"), "text")
    if task == "prompt":
        return {"prompt": prompt, "fields": _fields(row, opts)}
    if task != "prm":
        raise _no_task("prm", task)
    return {
        "prompt": prompt,
        "steps": get(row, _prm_steps_key(row, opts), "str_list"),
        "labels": get(row, _key(PRM.keys, opts, "label_key"), "label_list"),
        "fields": {},
    }


def _custom_normalize(row, task, opts):
    """The keys named in the source config, read as the task needs them (no detection)."""
    k = {f: opts.keys.get(f) for f in ("input_key", "output_key", "chosen_key", "rejected_key", "label_key")}
    ik = k["input_key"] or "prompt"
    fields = _fields(row, opts)
    if task == "pretrain":
        return {"text": get(row, ik, "text"), "fields": fields}
    if task == "pair":
        ck, rk = k["chosen_key"] or "chosen", k["rejected_key"] or "rejected"
        chosen, rejected = get(row, ck, "text"), get(row, rk, "text")
        whole = isinstance(chosen, list) and chosen[0]["role"] != "assistant"
        prompt = None if whole else _templated(row, opts, get(row, ik, "text"))
        if whole:
            from rlhf.data.templates import split_shared_prefix

            prompt, chosen, rejected = split_shared_prefix(chosen, get(row, rk, "messages"))
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "fields": fields}
    prompt = _templated(row, opts, get(row, ik, "text"))
    if task == "prompt":
        return {"prompt": prompt, "fields": fields}
    ok = k["output_key"]
    if task == "sft":
        if ok is None and isinstance(prompt, list) and "response" not in row:
            return {"prompt": prompt, "response": None, "fields": fields}  # a whole conversation
        return {"prompt": prompt, "response": get(row, ok or "response", "text"), "fields": fields}
    if task == "unpaired":
        return {
            "prompt": prompt,
            "response": get(row, ok or "completion", "text"),
            "label": bool(get(row, k["label_key"] or "label", "label")),
            "fields": fields,
        }
    if task == "prm":
        return {
            "prompt": prompt,
            "steps": get(row, ok or "steps", "str_list"),
            "labels": get(row, k["label_key"] or "labels", "label_list"),
            "fields": {},
        }
    raise _no_task("custom", task)


def _keyed_match(pairs: Sequence[Tuple[str, str, str]]):
    """A match function: every (config field, default key, kind) is present with the right kind."""

    def match(row, opts):
        return all(_has(row, opts.keys.get(f) or key, kind) for f, key, kind in pairs)

    return match


# ------------------------------------------------------------------------------------------------ registry

_HH_TEXT = "\n\nHuman: What is 2 plus 3?\n\nAssistant: 5."
HH = Format(
    "hh_rlhf",
    "Anthropic HH-RLHF: chosen/rejected whole conversations as '\\n\\nHuman: ... \\n\\nAssistant: ...' "
    "text; prompt = the turns before the last Assistant turn",
    ("pair", "sft", "prompt"),
    {"chosen_key": "chosen", "rejected_key": "rejected"},
    ("chosen", "rejected"),
    _hh_match,
    _hh_normalize,
    hub="Anthropic/hh-rlhf",
    example={"chosen": _HH_TEXT, "rejected": "\n\nHuman: What is 2 plus 3?\n\nAssistant: 6."},
)
ULTRAFEEDBACK = Format(
    "ultrafeedback",
    "UltraFeedback-binarized: chosen/rejected message lists sharing the prompt turns (splits train_prefs/test_prefs)",
    ("pair", "sft", "prompt"),
    {"input_key": "prompt", "chosen_key": "chosen", "rejected_key": "rejected"},
    ("chosen", "rejected", "prompt"),
    _conv_pair_match,
    _conv_pair_normalize,
    hub="HuggingFaceH4/ultrafeedback_binarized",
    example={
        "prompt": "Hi?",
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}],
    },
)
SHAREGPT = Format(
    "sharegpt",
    "ShareGPT/OpenHermes: conversations of {from: human|gpt|system, value} (data.role_map for other speakers)",
    ("sft", "pretrain", "prompt"),
    {"input_key": "conversations"},
    ("conversations",),
    _keyed_match([("input_key", "conversations", "sharegpt")]),
    _conversation_normalize(_sharegpt_messages, "sharegpt"),
    hub="teknium/OpenHermes-2.5",
    example={"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
)
ALPACA = Format(
    "alpaca",
    "Alpaca: instruction + optional input + output; prompt = data.prompt_template "
    "(default '{instruction}\\n\\n{input}')",
    ("sft", "prompt", "pretrain"),
    {"input_key": "instruction", "output_key": "output"},
    ("instruction", "output"),
    _keyed_match([("input_key", "instruction", "str"), ("output_key", "output", "str")]),
    _alpaca_normalize,
    hub="tatsu-lab/alpaca",
    example={"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
    prompt_template="{instruction}\n\n{input}",
)
MESSAGES = Format(
    "messages",
    "OpenAI-style messages: [{role, content}, ...]; every assistant turn is trained",
    ("sft", "pretrain", "prompt"),
    {"input_key": "messages"},
    ("messages",),
    _keyed_match([("input_key", "messages", "messages")]),
    _conversation_normalize(_messages_of, "messages"),
    hub="HuggingFaceH4/ultrachat_200k",
    example={"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
)
PROMPT_RESPONSE = Format(
    "prompt_response",
    "prompt + response (or completion): strings or message lists",
    ("sft", "prompt"),
    {"input_key": "prompt", "output_key": "response"},
    ("prompt", "response"),
    lambda row, opts: (
        _has(row, opts.keys.get("input_key") or "prompt", "text") and _has(row, _response_key(row, opts), "text")
    ),
    _prompt_response_normalize,
    example={"prompt": "What is 2 plus 3?", "response": "5."},
)
PAIRS = Format(
    "pairs",
    "prompt + chosen + rejected responses (strings or assistant messages)",
    ("pair", "sft", "prompt"),
    {"input_key": "prompt", "chosen_key": "chosen", "rejected_key": "rejected"},
    ("prompt", "chosen", "rejected"),
    _pairs_match,
    _pairs_normalize,
    example={"prompt": "What is 2 plus 3?", "chosen": "5.", "rejected": "6."},
)
GSM8K = Format(
    "gsm8k",
    "GSM8K: question + answer (worked solution ending in '#### <n>'); reward field `answer` = the text "
    "after '####', `solution` = the whole answer (the SFT response)",
    ("prompt", "sft"),
    {"input_key": "question", "output_key": "answer"},
    ("question", "answer"),
    lambda row, opts: (
        _has(row, opts.keys.get("input_key") or "question", "str")
        and _has(row, opts.keys.get("output_key") or "answer", "str")
        and GSM8K_MARK in row[opts.keys.get("output_key") or "answer"]
    ),
    _gsm8k_normalize,
    hub="openai/gsm8k",
    example={"question": "What is 2 plus 3?", "answer": "2 + 3 = 5.\n#### 5"},
)
PROMPT_COLLECTION = Format(
    "prompt_collection",
    "OpenRLHF prompt collections: context_messages (or input_messages) message lists; "
    "other columns become reward fields",
    ("prompt",),
    {"input_key": "context_messages"},
    ("context_messages",),
    lambda row, opts: _has(row, _collection_key(row, opts), "messages"),
    _collection_normalize,
    hub="OpenRLHF/prompt-collection-v0.1",
    example={"context_messages": [{"role": "user", "content": "What is 2 plus 3?"}], "answer": "5"},
)
PROMPT_ONLY = Format(
    "prompt",
    "prompt only (string or messages), for RL; other columns become reward fields",
    ("prompt",),
    {"input_key": "prompt"},
    ("prompt",),
    _keyed_match([("input_key", "prompt", "text")]),
    _prompt_only_normalize,
    example={"prompt": "What is 2 plus 3?", "answer": "5"},
)
KTO = Format(
    "kto",
    "unpaired KTO rows: prompt + completion + label (desirable true/false)",
    ("unpaired", "prompt"),
    {"input_key": "prompt", "output_key": "completion", "label_key": "label"},
    ("prompt", "completion", "label"),
    _keyed_match(
        [("input_key", "prompt", "text"), ("output_key", "completion", "text"), ("label_key", "label", "label")]
    ),
    _kto_normalize,
    hub="trl-lib/kto-mix-14k",
    example={"prompt": "What is 2 plus 3?", "completion": "5.", "label": True},
)
TEXT = Format(
    "text",
    "plain text for continued pre-training",
    ("pretrain",),
    {"input_key": "text"},
    ("text",),
    _keyed_match([("input_key", "text", "text")]),
    _text_normalize,
    example={"text": "Two plus three is five."},
)
PRM = Format(
    "prm",
    "process supervision: prompt + steps (or completions) + one label a step",
    ("prm", "prompt"),
    {"input_key": "prompt", "output_key": "steps", "label_key": "labels"},
    ("prompt", "steps", "labels"),
    lambda row, opts: (
        _has(row, opts.keys.get("input_key") or "prompt", "text")
        and _has(row, _prm_steps_key(row, opts), "str_list")
        and _has(row, opts.keys.get("label_key") or "labels", "label_list")
    ),
    _prm_normalize,
    hub="trl-lib/math_shepherd",
    example={"prompt": "What is 2 plus 3?", "steps": ["2 + 3 = 5"], "labels": [True]},
)
CUSTOM = Format(
    "custom",
    "the keys named by data.sources.<name>.input_key/output_key/chosen_key/rejected_key/label_key",
    TASKS,
    {
        "input_key": "prompt",
        "output_key": "response",
        "chosen_key": "chosen",
        "rejected_key": "rejected",
        "label_key": "label",
    },
    (),
    lambda row, opts: False,
    _custom_normalize,
)

FORMATS: Dict[str, Format] = {
    f.name: f
    for f in (
        HH,
        ULTRAFEEDBACK,
        SHAREGPT,
        ALPACA,
        MESSAGES,
        PROMPT_RESPONSE,
        PAIRS,
        GSM8K,
        PROMPT_COLLECTION,
        PROMPT_ONLY,
        KTO,
        TEXT,
        PRM,
        CUSTOM,
    )
}


# ------------------------------------------------------------------------------------------- suspicious rows

# A response shorter than this may legitimately occur inside its prompt ("5", "Yes").
_MIN_ECHO_CHARS = 12


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def _response_text(value: Any) -> str:
    """The trained text of a response: a string, or the assistant turns of a message list."""
    if isinstance(value, list):
        return "\n".join(m["content"] for m in value if isinstance(m, dict) and m.get("role") == "assistant")
    return "" if value is None else str(value)


def check_example(example: Mapping[str, Any], task: str) -> None:
    """Refuse a normalized example that cannot teach anything, or teaches the wrong thing (RowError): an empty
    response, chosen identical to rejected, a prompt that contains its own response (a key pointing at the
    whole conversation)."""
    prompt = _as_text(example.get("prompt"))
    if task == "pair":
        chosen, rejected = _response_text(example["chosen"]), _response_text(example["rejected"])
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise RowError(f"empty {name} response", key=name, detail="nothing to compare")
        if chosen.strip() == rejected.strip():
            raise RowError("chosen identical to rejected", key="chosen", detail="the pair carries no preference")
        responses = [("chosen", chosen), ("rejected", rejected)]
    elif task in ("sft", "unpaired") and example.get("response") is not None:
        text = _response_text(example["response"])
        if not text.strip():
            raise RowError("empty response", key="response", detail="nothing to train on")
        responses = [("response", text)]
    elif task == "sft" and isinstance(example.get("prompt"), list):
        if not any(m["role"] == "assistant" and m["content"].strip() for m in example["prompt"]):
            raise RowError("empty response", key="response", detail="no assistant turn has text")
        return
    else:
        return
    for name, text in responses:
        if len(text.strip()) >= _MIN_ECHO_CHARS and text.strip() in prompt:
            raise RowError(
                f"prompt contains its own {name} response",
                key=name,
                detail="the prompt key probably holds the whole conversation; name the format with "
                "data.format=<name> or point input_key at the prompt alone",
            )


# ---------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detection:
    format: Format
    matched: int  # rows of the sample the format matched
    rows: int  # rows looked at
    detected: bool  # False when the format was named in the config


def get_format(name: str, key: str = "data.format") -> Format:
    if name not in FORMATS:
        import difflib

        close = difflib.get_close_matches(name, list(FORMATS), n=1)
        raise DataError(
            f"unknown format {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            key=key,
            hint=f"use one of {sorted(FORMATS)}, or leave it unset to detect the format from the rows",
        )
    return FORMATS[name]


def detect_format(
    rows: Sequence[Mapping[str, Any]], task: str, opts: FormatOptions, *, source: str, location: str = ""
) -> Detection:
    """The format of `rows` (a sample of a source), checked to serve `task`; DataError when none or several fit."""
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        raise DataError(
            "no rows to detect the format from",
            source=source,
            key=f"data.sources.{source}.path",
            hint=f"check that {location or 'the path'} holds data rows",
        )
    counts = {f.name: sum(1 for r in rows if _safe_match(f, r, opts)) for f in FORMATS.values() if f.name != "custom"}
    best = max(counts.values())
    keys = collections.Counter(k for r in rows for k in r if not k.startswith("_"))
    present = [k for k, _ in keys.most_common(12)]
    if best == 0 or best < 0.5 * len(rows):
        raise DataError(
            f"no known format matches the rows (keys {present}"
            + (f"; best: {max(counts, key=counts.get)} on {best} of {len(rows)} rows" if best else "")
            + ")",
            source=source,
            origin=location or None,
            key=f"data.sources.{source}.format",
            hint=f"name the format with data.format=<name> (or data.sources.{source}.format=<name>) and its keys with "
            f"data.sources.{source}.input_key=<key>...; formats: "
            + "; ".join(f"{f.name} ({', '.join(f.required)})" for f in FORMATS.values() if f.required),
        )
    # The most specific format that fits at least half the rows, then the one fitting the most rows: rows of
    # a richer format (KTO's prompt + completion + label) also fit a poorer one (prompt + completion).
    fits = [FORMATS[n] for n, c in counts.items() if c >= 0.5 * len(rows)]
    order = sorted(fits, key=lambda f: (-len(f.required), -counts[f.name]))
    first = order[0]
    top = [f for f in order if len(f.required) == len(first.required) and counts[f.name] == counts[first.name]]
    best = counts[first.name]
    if len(top) > 1:
        serving = [f for f in top if task in f.tasks]
        if len(serving) != 1:
            names = ", ".join(f.name for f in top)
            raise DataError(
                f"the rows fit several formats equally well ({names}; keys {present})",
                source=source,
                origin=location or None,
                key=f"data.sources.{source}.format",
                hint=f"name one with data.format=<name> (or data.sources.{source}.format=<name>), e.g. "
                f"data.format={top[0].name}",
            )
        top = serving
    fmt = top[0]
    if task not in fmt.tasks:
        _refuse_near_miss(rows, task, opts, source, location, keys)
    check_task(fmt, task, source)
    return Detection(fmt, best, len(rows), True)


def _refuse_near_miss(rows, task: str, opts: FormatOptions, source: str, location: str, keys) -> None:
    """Rows with every key of a format for `task` whose values do not fit it (KTO labels written as the strings
    "true"/"false", say): name that format, the key and the value, rather than the poorer format detected."""
    for f in FORMATS.values():
        if task not in f.tasks or not f.required or f.name == "custom":
            continue
        if not all(keys.get(k, 0) >= 0.5 * len(rows) for k in f.required):
            continue
        for row in rows:
            try:
                f.normalize(row, task, opts)
            except RowError as e:
                raise DataError(
                    f"the rows have the keys of format {f.name} ({', '.join(f.required)}) but not its values: "
                    f"{e.reason}{' (' + e.detail + ')' if e.detail else ''}",
                    source=source,
                    origin=_row_origin(row, location),
                    key=f"data.sources.{source}.format",
                    hint=f"write the values as format {f.name} expects (e.g. {json.dumps(f.example)}); "
                    f"data.format={f.name} then checks every row",
                ) from None
            except (KeyError, TypeError, AttributeError, IndexError):
                break


def _row_origin(row: Mapping[str, Any], location: str) -> Optional[str]:
    return row.get("_origin") or location or None


def _safe_match(fmt: Format, row: Mapping[str, Any], opts: FormatOptions) -> bool:
    try:
        return bool(fmt.match(row, opts))
    except (AttributeError, TypeError, KeyError, IndexError):
        return False


def check_task(fmt: Format, task: str, source: str) -> None:
    if task in fmt.tasks:
        return
    serves = "; ".join(
        f"{t}: algo={TASK_ALGOS[t].split(',')[0]}" + (f" (also {TASK_ALGOS[t]})" if "," in TASK_ALGOS[t] else "")
        for t in fmt.tasks
    )
    raise DataError(
        f"format {fmt.name} ({fmt.summary.split(':')[0]}) cannot serve the {task} data this algorithm trains on "
        f"({TASK_ALGOS[task]})",
        source=source,
        key=f"data.sources.{source}.format",
        hint=f"{fmt.name} rows serve: {serves}; or give data in a format for {task}: "
        + ", ".join(f.name for f in FORMATS.values() if task in f.tasks and f.name != "custom"),
    )
