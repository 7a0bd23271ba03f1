"""Prompt rendering and tokenization of one row for each task, with loss masks on response tokens only.

Conventions:

- `loss_mask[t] == 1` marks a token the model is trained to produce: trainers shift as usual, so logits at t-1
  are scored against token t where loss_mask[t] is 1.
- A text is cut into segments (prompt, response, template glue) that are tokenized one by one and concatenated;
  segment boundaries are therefore token boundaries, masks are exact, and the prompt tokens of a chosen and a
  rejected response are identical.
- With a chat template, the tokens of an assistant turn are located by rendering prefixes of the conversation
  (`messages[:i]` with the generation prompt, `messages[:i+1]` without): the turn's tokens are its content and
  the template's end-of-turn token; whitespace the template puts after the end token is not trained.
- Plain text (no chat template) gets the tokenizer's leading special tokens (BOS). A trained response or turn
  that does not end with a special token (plain text, a template without end-of-turn marker) gets EOS.
- Truncation: the prompt to `prompt_max_len` tokens from the left (keeps the end of the question), then the
  whole sample to `max_len` from the right. A sample with no trained token left is a bad row (`RowError`).

`args` is any object with `apply_chat_template`, `max_len` and `prompt_max_len` attributes (a `DataConfig`,
or `TemplateArgs`). Prompt templates with named row fields are applied before, by the row's format
(`rlhf.data.formats.apply_prompt_template`), so they hold with and without the chat template. The tokenizer is any HF PreTrainedTokenizer(Fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rlhf.data.errors import DataError, RowError

Messages = List[Dict[str, str]]
PromptValue = Union[str, Messages]
# Text between a step tag and the next step of a process-reward sample.
STEP_SEPARATOR = "\n"
# (text, trained): a piece of the rendered sample and whether its tokens are trained on.
Segment = Tuple[str, bool]


@dataclass(frozen=True)
class TemplateArgs:
    """The template and length settings of a `DataConfig`, for callers that have no DataConfig at hand."""

    apply_chat_template: bool = True
    max_len: int = 512
    prompt_max_len: int = 256


# ------------------------------------------------------------------------------------------------------ prompts


def render_prompt(value: PromptValue, tokenizer: Any, *, apply_chat_template: bool = True) -> str:
    """The text a model continues: a string prompt (as one user message through the chat template with the
    generation prompt, or as is), or a list of chat messages (chat template needed).
    """
    _check_chat_form(tokenizer, apply_chat_template, value)
    if not apply_chat_template:
        return value
    return _render_chat(tokenizer, as_messages(value, "user"), add_generation_prompt=True)


def tokenize_prompt(
    prompt_value: PromptValue, tokenizer: Any, args: Any, fields: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """An RL prompt: {"input_ids": list[int] (at most prompt_max_len, cut from the left), "text": the rendered
    prompt (decoded from the kept tokens when it was cut), "fields": the extra columns for reward functions}.
    """
    chat = bool(args.apply_chat_template)
    text = render_prompt(prompt_value, tokenizer, apply_chat_template=chat)
    ids = (_leading_special_ids(tokenizer) if not chat else []) + _encode(tokenizer, text)
    if len(ids) > args.prompt_max_len:
        ids = ids[len(ids) - args.prompt_max_len :]
        text = tokenizer.decode(ids, skip_special_tokens=False)
    return {"input_ids": ids, "text": text, "fields": dict(fields or {})}


# ---------------------------------------------------------------------------------------------- SFT and pairs


def tokenize_sft(
    prompt_value: PromptValue,
    response_value: Optional[PromptValue],
    tokenizer: Any,
    args: Any,
    *,
    pretrain_mode: bool = False,
) -> Dict[str, List[int]]:
    """{"input_ids", "loss_mask"} (lists of equal length) for supervised fine-tuning.

    - prompt + response (strings or messages): loss on the response tokens (every assistant turn of a
      response given as messages);
    - a full conversation (messages, `response_value=None`): loss on every assistant turn;
    - `pretrain_mode=True`: a plain text (or a conversation rendered whole) trained on every token.
    """
    if pretrain_mode:
        return _tokenize_pretrain(prompt_value, tokenizer, args)
    segments, chat = _sft_segments(prompt_value, response_value, tokenizer, args)
    ids, mask, prompt_len = _encode_segments(tokenizer, segments, plain=not chat)
    ids, mask = _truncate(ids, mask, prompt_len if response_value is not None else 0, args)
    return {"input_ids": ids, "loss_mask": mask}


def tokenize_pair(
    prompt_value: Optional[PromptValue],
    chosen: PromptValue,
    rejected: PromptValue,
    tokenizer: Any,
    args: Any,
) -> Dict[str, Any]:
    """{"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask", "prompt_len"} for reward models and DPO.

    Two forms: a prompt with `chosen`/`rejected` responses (strings, or lists of assistant messages), or
    `chosen`/`rejected` full conversations sharing a prompt prefix (`prompt_value` may then be None): the
    shared leading messages are the prompt. Both responses follow the same prompt tokens; masks mark responses.
    """
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise RowError("chosen and rejected differ in form", detail="both must be strings or both message lists")
    if isinstance(chosen, list) and chosen and chosen[0].get("role") != "assistant":
        prompt_value, chosen, rejected = split_shared_prefix(chosen, rejected)
    if prompt_value is None:
        raise RowError("missing prompt", detail="string responses need a prompt")
    out: Dict[str, Any] = {}
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        segments, chat = _sft_segments(prompt_value, response, tokenizer, args)
        ids, mask, prompt_len = _encode_segments(tokenizer, segments, plain=not chat)
        ids, mask = _truncate(ids, mask, prompt_len, args, what=name)
        out[f"{name}_ids"], out[f"{name}_mask"] = ids, mask
    out["prompt_len"] = min(out["chosen_mask"].index(1), out["rejected_mask"].index(1))
    return out


def split_shared_prefix(chosen: Messages, rejected: Messages) -> Tuple[Messages, Messages, Messages]:
    """(prompt, chosen response, rejected response) of two conversations: the prompt is their shared leading
    messages, and each response must start with an assistant message.
    """
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) and k == len(rejected):
        raise RowError("chosen and rejected are identical")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if k == len(conv) or conv[k].get("role") != "assistant":
            raise RowError(
                "chosen and rejected differ outside an assistant turn",
                detail=f"{name} message {k} should be the first assistant message after the shared prompt",
            )
    if k == 0:
        raise RowError("no shared prompt", detail="the conversations start with different assistant messages")
    return chosen[:k], chosen[k:], rejected[k:]


# ------------------------------------------------------------------------------------------------- KTO and PRM


def tokenize_unpaired(
    prompt_value: PromptValue, completion: PromptValue, label: Any, tokenizer: Any, args: Any
) -> Dict[str, Any]:
    """{"input_ids", "loss_mask", "label": bool} for KTO (Ethayarajh et al. 2024, arXiv:2402.01306): one
    completion marked desirable (True) or undesirable (False).
    """
    sample: Dict[str, Any] = dict(tokenize_sft(prompt_value, completion, tokenizer, args))
    sample["label"] = bool(label)
    return sample


def tokenize_prm(
    prompt_value: PromptValue,
    steps: Sequence[str],
    labels: Sequence[Any],
    step_tag: str,
    tokenizer: Any,
    args: Any,
) -> Dict[str, List]:
    """{"input_ids", "step_mask", "step_labels"} for a process reward model (Lightman et al. 2023,
    arXiv:2305.20050; Math-Shepherd, Wang et al. 2023, arXiv:2312.08935).

    Layout: <prompt><step 1><tag>\n<step 2><tag>...; `step_mask` is 1 at each tag token (the PRM reads the
    logits at the tag itself) and `step_labels` holds that step's label (bool/0/1 or a soft label in [0, 1], as a
    float; 0.0 elsewhere). The tag must be one token.
    """
    if len(steps) != len(labels):
        raise RowError("steps and labels differ in length", detail=f"{len(steps)} steps, {len(labels)} labels")
    tag_ids = _encode(tokenizer, step_tag)
    if len(tag_ids) != 1:
        raise DataError(
            f"step tag {step_tag!r} is {len(tag_ids)} tokens with this tokenizer, it must be exactly one",
            key="step_tag",
            hint="add it to the tokenizer as a special token, or choose a tag the tokenizer keeps whole",
        )
    chat = bool(args.apply_chat_template)
    prompt = render_prompt(prompt_value, tokenizer, apply_chat_template=chat)
    ids = (_leading_special_ids(tokenizer) if not chat else []) + _encode(tokenizer, prompt)
    step_mask, step_labels = [0] * len(ids), [0.0] * len(ids)
    prompt_len = len(ids)
    for i, (step, label) in enumerate(zip(steps, labels)):
        step_ids = _encode(tokenizer, (STEP_SEPARATOR if i else "") + step) + tag_ids
        ids += step_ids
        step_mask += [0] * (len(step_ids) - 1) + [1]
        step_labels += [0.0] * (len(step_ids) - 1) + [float(label)]
    ids, step_mask, step_labels = _truncate_parallel(ids, [step_mask, step_labels], prompt_len, args, "step tag")
    return {"input_ids": ids, "step_mask": step_mask, "step_labels": step_labels}


# --------------------------------------------------------------------------------------------------- pretrain


def _tokenize_pretrain(value: PromptValue, tokenizer: Any, args: Any) -> Dict[str, List[int]]:
    if isinstance(value, str):
        ids = _leading_special_ids(tokenizer) + _encode(tokenizer, value)
        _close_with_eos(tokenizer, ids, [])
    else:
        _check_chat_form(tokenizer, args.apply_chat_template, value)
        ids = _encode(tokenizer, _render_chat(tokenizer, value, add_generation_prompt=False))
    ids = ids[: args.max_len]
    return {"input_ids": ids, "loss_mask": [1] * len(ids)}


# ------------------------------------------------------------------------------------------------- internals


def as_messages(value: PromptValue, role: str) -> Messages:
    """A string as one message of `role`; a message list as is."""
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _sft_segments(
    prompt_value: PromptValue, response_value: Optional[PromptValue], tokenizer: Any, args: Any
) -> Tuple[List[Segment], bool]:
    """Segments of a prompt + response (or of a full conversation) and whether the chat template made them."""
    chat = bool(args.apply_chat_template)
    _check_chat_form(tokenizer, chat, prompt_value, response_value)
    if response_value is None:
        if not isinstance(prompt_value, list):
            raise RowError(
                "no response", detail="a row without a response must be a list of chat messages (a conversation)"
            )
        return _chat_segments(tokenizer, prompt_value, train_from=0), True
    if not chat:
        return [(prompt_value, False), (response_value, True)], False
    prompt_messages = as_messages(prompt_value, "user")
    response_messages = as_messages(response_value, "assistant")
    if not any(m.get("role") == "assistant" for m in response_messages):
        raise RowError("response has no assistant message")
    conversation = prompt_messages + response_messages
    return _chat_segments(tokenizer, conversation, train_from=len(prompt_messages)), True


def _chat_segments(tokenizer: Any, messages: Messages, train_from: int) -> List[Segment]:
    """Segments of a rendered conversation, trained on the assistant turns at index >= train_from."""
    full = _render_chat(tokenizer, messages, add_generation_prompt=False)
    segments: List[Segment] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i < train_from:
            continue
        if i == 0:
            raise RowError("conversation starts with an assistant message", detail="there is no prompt to answer")
        before = _render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            raise DataError(
                "the chat template does not render a conversation's beginning as a prefix of the whole "
                f"(at message {i}), so assistant turns cannot be located",
                key="tokenizer.chat_template",
                hint="use a template that renders earlier turns unchanged, or give prompt/response keys instead",
            )
        segments += [(full[cursor : len(before)], False), (full[len(before) : len(through)], True)]
        cursor = len(through)
    segments.append((full[cursor:], False))
    return segments


def _encode_segments(tokenizer: Any, segments: Sequence[Segment], *, plain: bool) -> Tuple[List[int], List[int], int]:
    """(ids, loss mask, prompt length): segments tokenized one by one; the prompt length counts the tokens
    before the first trained segment. Plain text starts with the tokenizer's leading special tokens (BOS).

    A trained segment is trained up to its last visible token; whitespace the template puts after it is glue.
    When that last token is not a special token (no end-of-turn marker, plain text), EOS is inserted there, so
    the model learns to stop.
    """
    ids: List[int] = _leading_special_ids(tokenizer) if plain else []
    mask: List[int] = [0] * len(ids)
    prompt_len: Optional[int] = None
    for text, trained in segments:
        piece = _encode(tokenizer, text)
        if not trained:
            ids += piece
            mask += [0] * len(piece)
            continue
        if prompt_len is None:
            prompt_len = len(ids)
        end = _visible_end(tokenizer, piece)
        head, glue = piece[:end], piece[end:]
        _close_with_eos(tokenizer, head, [])
        ids += head + glue
        mask += [1] * len(head) + [0] * len(glue)
    return ids, mask, len(ids) if prompt_len is None else prompt_len


def _visible_end(tokenizer: Any, piece: List[int]) -> int:
    """Index after the last token of `piece` that decodes to more than whitespace (0 when there is none)."""
    end = len(piece)
    while end > 0 and not tokenizer.decode(piece[end - 1 : end], skip_special_tokens=False).strip():
        end -= 1
    return end


def _truncate(
    ids: List[int], mask: List[int], prompt_len: int, args: Any, what: str = "response"
) -> Tuple[List[int], List[int]]:
    ids, mask = _truncate_parallel(ids, [mask], prompt_len, args, f"{what} token")
    return ids, mask


def _truncate_parallel(
    ids: List[int], parallel: List[List], prompt_len: int, args: Any, what: str
) -> Tuple[List[int], ...]:
    """Cut the first `prompt_len` tokens (the prompt) to `prompt_max_len` from the left, then everything to
    `max_len` from the right; `parallel[0]` is the mask whose 1s must survive.
    """
    cut = max(0, prompt_len - args.prompt_max_len)
    kept = [seq[cut:][: args.max_len] for seq in [ids] + parallel]
    if not any(kept[1]):
        raise RowError(
            f"no {what} left after truncation",
            detail=f"prompt of {prompt_len} tokens (prompt_max_len {args.prompt_max_len}), "
            f"sample of {len(ids)} tokens (max_len {args.max_len}); raise data.max_len or shorten the prompt",
        )
    return tuple(kept)


def _check_chat_form(tokenizer: Any, apply_chat_template: bool, *values: Any) -> None:
    """Chat messages need the chat template; applying the chat template needs a tokenizer that has one."""
    if not apply_chat_template:
        if any(isinstance(v, list) for v in values):
            raise DataError(
                "a row holds chat messages but data.apply_chat_template is false",
                key="data.apply_chat_template",
                hint="set data.apply_chat_template=true, or give string prompts and responses",
            )
        return
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template",
            key="data.apply_chat_template",
            hint="set data.apply_chat_template=false (and data.prompt_template) for string prompts, or use a "
            "tokenizer with a chat template",
        )


def _render_chat(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer: Any, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _leading_special_ids(tokenizer: Any) -> List[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama-style tokenizers, none for GPT-2/Qwen)."""
    with_specials = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = _encode(tokenizer, "a")
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return with_specials[:start]
    return []


def _close_with_eos(tokenizer: Any, ids: List[int], mask: List[int]) -> None:
    """Append EOS (trained) to `ids` and `mask` in place unless the text already ends with a special token."""
    if _ends_with_special(tokenizer, ids):
        return
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token", key="tokenizer.eos_token", hint="set tokenizer.eos_token")
    ids.append(tokenizer.eos_token_id)
    mask.append(1)


def _ends_with_special(tokenizer: Any, ids: List[int]) -> bool:
    """Whether the last visible token is EOS or another special token (the text already closes itself)."""
    specials = set(getattr(tokenizer, "all_special_ids", []))
    specials |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    for token in reversed(ids):
        if token in specials or token == tokenizer.eos_token_id:
            return True
        if tokenizer.decode([token], skip_special_tokens=False).strip():
            return False
    return False
