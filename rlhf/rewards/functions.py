"""Rule-based reward functions shipped with rlhf.

Every function follows the batched reward contract (see `rlhf/rewards/README.md`):

    fn(prompts: list[str], responses: list[str], **fields) -> Sequence[float]   # length len(responses)

where each extra field is a data column aligned with `prompts` (e.g. `answer=["19", "7"]`). A function declares
only the fields it needs; `rlhf.rewards.loader.RewardFunction` passes exactly those.

Shipped:
- `math_exact_match`: 1.0 when the response's final answer equals the reference number (GSM8K / MATH style).
- `numeric_format`: dense reward, the fraction of non-space characters that are digits.
- `numeric_closeness`: partial credit 1 / (1 + |answer - reference|), a dense companion of exact match.
- `number_format`: 1.0 when the response is one number and nothing else (`7.`), the default task's format.
- `regex_format(pattern)`: factory; 1.0 when the response fully matches a regex.
- `think_answer_format`: `regex_format` for `<think>...</think><answer>...</answer>` (DeepSeek-R1 style).

This module is pure Python (no torch) so reward servers and data tools import it instantly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction

__all__ = [
    "THINK_ANSWER_PATTERN",
    "extract_answer",
    "math_exact_match",
    "number_format",
    "numeric_closeness",
    "numeric_format",
    "parse_number",
    "regex_format",
    "think_answer_format",
]

# An unsigned number: 1,234,567 | 42 | 3.14 | .5 | 1e-3, optionally a simple fraction `3/4`. Thousands
# separators are only recognised in groups of exactly three digits, so "1,2,3" stays a list of three numbers.
_MANTISSA = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_BODY = rf"{_MANTISSA}(?:/{_MANTISSA})?"
# The lookbehind stops a match from starting in the middle of another number ("3.14" must not yield "14").
_NUMBER_RE = re.compile(rf"(?<![\d.]){_NUMBER_BODY}")
_FULL_NUMBER_RE = re.compile(rf"(?P<sign>[-−+]?)\s*(?P<body>{_NUMBER_BODY})")
_MINUS = ("-", "−")

# "The answer is 42", "Final answer: 42", "answer = 42", and the GSM8K reference marker "#### 42".
_ANSWER_PHRASE_RE = re.compile(r"(?:\banswer\b\s*(?:is|was|:|=)|####)", re.IGNORECASE)
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "^\\circ", "^{\\circ}", "\\%", "\\$", "$")


# Exact values only within these bounds: "1e4322363" as a Fraction is a 4.3-million-digit integer (a minute of
# big-integer arithmetic per response, and sampled text does write such numbers), and Python refuses to parse
# integers of over 4300 digits. Numbers beyond them stand as +-10**MAX_EXPONENT (or 10**-MAX_EXPONENT for tiny
# ones): no realistic reference answer is that large, so they compare unequal and far, as they should.
MAX_EXPONENT = 400
MAX_DIGITS = 1000


def _decimal(text: str) -> Fraction:
    """Value of an unsigned decimal such as "1234.5", ".5" or "1e-3" (no separators, no '/'), bounded."""
    mantissa, _, exponent = text.lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return Fraction(0)  # "0e99999999" included
    exp = 0
    if exponent:
        magnitude = exponent.lstrip("+-")
        exp = int(magnitude) if len(magnitude) <= 6 else 10**7
        exp = -exp if exponent.startswith("-") else exp
    whole = whole.lstrip("0")
    # The decimal order of magnitude: the integer part's digits, else minus the zeros after the point.
    order = exp + (len(whole) if whole else -(len(fraction) - len(fraction.lstrip("0"))))
    if len(digits) > MAX_DIGITS or abs(order) > MAX_EXPONENT:
        return Fraction(10) ** (MAX_EXPONENT if order > 0 else -MAX_EXPONENT)
    value = Fraction(f"{whole or 0}.{fraction or 0}")
    return value * Fraction(10) ** exp if exp else value


def _to_fraction(token: str) -> Fraction | None:
    """Value of an unsigned number token such as "1,234.5" or "3/4"; None for a zero denominator."""
    num, _, den = token.replace(",", "").partition("/")
    value = _decimal(num)
    if den:
        denominator = _decimal(den)
        if denominator == 0:
            return None
        value /= denominator
    return value


def _normalize_latex(text: str) -> str:
    """Rewrite the LaTeX that wraps numbers in `\\boxed{}` answers into plain text ("\\frac{3}{4}" -> "3/4")."""
    text = text.replace("{,}", ",")  # "1{,}000" is how LaTeX writes a thousands comma
    text = _LATEX_TEXT_RE.sub(r" \1 ", text)
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    for token in _LATEX_DROP:
        text = text.replace(token, "")
    return text


def _numbers(text: str) -> list[Fraction]:
    """All numbers in `text`, in order; a '-' directly before a digit is a sign unless it follows a word or ')'."""
    values = []
    for match in _NUMBER_RE.finditer(text):
        value = _to_fraction(match.group(0))
        if value is None:
            continue
        start = match.start()
        if start > 0 and text[start - 1] in _MINUS:
            before = text[start - 2] if start > 1 else " "
            # "5-3" is a subtraction, "x = -3" a negative number.
            if not (before.isalnum() or before in ")]}"):
                value = -value
        values.append(value)
    return values


def parse_number(text: str) -> Fraction | None:
    """The number that `text` consists of, or None if it is not exactly one number.

    Accepts "42", "-3", "1,234.50", "$5", "50%", "3/4", "-\\frac{1}{2}", "1e3", "7." (trailing period).
    Exact `Fraction`s, so "0.5" == "1/2" and large integers compare without float rounding.
    """
    text = _normalize_latex(str(text)).strip().rstrip(".").strip()
    text = text.removeprefix("$").removesuffix("%").strip()
    match = _FULL_NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    value = _to_fraction(match.group("body"))
    if value is not None and match.group("sign") in _MINUS:
        value = -value
    return value


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces), or the token after `\\boxed ` without braces."""
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    if start >= len(text):
        return None
    if text[start] != "{":
        return text[start:].split(maxsplit=1)[0] if text[start:].strip() else None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None  # unbalanced: the response was cut off inside the box


def _value_of_span(span: str) -> Fraction | None:
    """A whole-span number ("\\frac{3}{4}") if the span is one, else the last number inside it ("x = 5")."""
    value = parse_number(span)
    if value is not None:
        return value
    numbers = _numbers(_normalize_latex(span))
    return numbers[-1] if numbers else None


def extract_answer(text: str) -> Fraction | None:
    """The final numeric answer of a response, or None if it holds no number.

    Looks, in order of precedence, for: the last `\\boxed{...}`; the last `<answer>...</answer>` tag; the first
    number after the last "answer is" / "answer:" / "answer =" / "####"; the last number anywhere.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        value = _value_of_span(boxed)
        if value is not None:
            return value
    tags = _ANSWER_TAG_RE.findall(text)
    if tags:
        value = _value_of_span(tags[-1])
        if value is not None:
            return value
    phrases = list(_ANSWER_PHRASE_RE.finditer(text))
    if phrases:
        numbers = _numbers(_normalize_latex(text[phrases[-1].end() :]))
        if numbers:
            return numbers[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def _reference_value(answer: object, index: int) -> Fraction:
    """The reference answer as a number: a bare number, or a worked solution ending in "#### 72" (GSM8K)."""
    if isinstance(answer, bool):
        raise ValueError(f"math_exact_match: reference answer at row {index} is a bool ({answer}); expected a number")
    if isinstance(answer, (int, float)):
        return Fraction(answer)
    value = parse_number(str(answer))
    if value is None:
        value = extract_answer(str(answer))
    if value is None:
        raise ValueError(
            f"math_exact_match: reference answer at row {index} is not a number: {str(answer)[:200]!r}. "
            "Give the data set's `answer` column numeric values (e.g. '72', '-3.5', '3/4', '#### 72')."
        )
    return value


def math_exact_match(
    prompts: Sequence[str], responses: Sequence[str], answer: Sequence[object], **kwargs
) -> list[float]:
    """1.0 where the response's final number equals the reference answer numerically, else 0.0.

    The final number is found by `extract_answer` (`\\boxed{}`, `<answer>` tags, "The answer is X", else the last
    number); commas, signs, decimals, simple and LaTeX fractions are understood, and the comparison is exact
    ("3.50" == "7/2"). A response with no number scores 0.0; a reference that is not a number raises ValueError
    naming the row, since it is a data error that would otherwise silently cap the reward.

    Args:
        prompts: [B] prompt strings (unused; part of the contract).
        responses: [B] generated responses.
        answer: [B] reference answers: numbers, number strings, or GSM8K solutions ending in "#### <n>".
    Returns:
        [B] rewards in {0.0, 1.0}.
    """
    if len(answer) != len(responses):
        raise ValueError(f"math_exact_match: got {len(responses)} responses but {len(answer)} answers")
    rewards = []
    for i, (response, reference) in enumerate(zip(responses, answer, strict=True)):
        expected = _reference_value(reference, i)
        predicted = extract_answer(response)
        rewards.append(1.0 if predicted is not None and predicted == expected else 0.0)
    return rewards


def numeric_closeness(
    prompts: Sequence[str], responses: Sequence[str], answer: Sequence[object], **kwargs
) -> list[float]:
    """Partial credit by distance: 1 / (1 + |final number - reference|); 0.0 when the response holds no number.

    A dense companion of `math_exact_match` for short numeric tasks: a policy that never hits the answer still
    learns which way to move ("12" earns 1/13 against a reference of 0, "1" earns 1/2).

    Args:
        prompts: [B] (unused). responses: [B]. answer: [B] reference answers as for `math_exact_match`.
    Returns:
        [B] rewards in [0, 1]; 1.0 exactly when the answer is right.
    """
    if len(answer) != len(responses):
        raise ValueError(f"numeric_closeness: got {len(responses)} responses but {len(answer)} answers")
    rewards = []
    for i, (response, reference) in enumerate(zip(responses, answer, strict=True)):
        predicted = extract_answer(response)
        if predicted is None:
            rewards.append(0.0)
            continue
        distance = abs(predicted - _reference_value(reference, i))
        # Distances beyond a float's range (a bounded huge number, MAX_EXPONENT) earn nothing.
        rewards.append(1.0 / (1.0 + float(distance)) if distance < 10**300 else 0.0)
    return rewards


def numeric_format(prompts: Sequence[str], responses: Sequence[str], **kwargs) -> list[float]:
    """Dense format reward in [0, 1]: the fraction of the response's non-space characters that are ASCII digits.

    A smooth signal for "answer with a number": a random-init policy already scores about 0.1-0.3, and every
    extra digit (or dropped non-digit) raises the reward, so RL climbs it within minutes on CPU. An empty or
    all-whitespace response scores 0.0.

    Args:
        prompts: [B] prompt strings (unused).
        responses: [B] generated responses.
    Returns:
        [B] rewards in [0, 1]; e.g. "12 ab" -> 2 digits of 4 non-space characters = 0.5.
    """
    rewards = []
    for response in responses:
        visible = [c for c in response if not c.isspace()]
        digits = sum(1 for c in visible if "0" <= c <= "9")
        rewards.append(digits / len(visible) if visible else 0.0)
    return rewards


def regex_format(pattern: str, *, flags: int = re.DOTALL, strip: bool = True) -> Callable[..., list[float]]:
    """Factory: a reward giving 1.0 to responses that fully match `pattern`, else 0.0.

    Args:
        pattern: regular expression the whole response must match (`re.fullmatch`).
        flags: `re` flags; DOTALL by default so `.` spans the newlines of multi-line reasoning.
        strip: drop leading/trailing whitespace first (tokenizers often leave a trailing newline).
    Returns:
        `fn(prompts, responses, **fields) -> list[float]` with `.pattern` set to the compiled regex.
    Loaded from config as `load_reward_function("rlhf.rewards.functions:regex_format", pattern=...)`.
    """
    try:
        compiled = re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"regex_format: invalid pattern {pattern!r}: {exc}") from exc

    def regex_format_reward(prompts: Sequence[str], responses: Sequence[str], **kwargs) -> list[float]:
        return [1.0 if compiled.fullmatch(r.strip() if strip else r) else 0.0 for r in responses]

    regex_format_reward.pattern = compiled  # type: ignore[attr-defined]
    regex_format_reward.__name__ = regex_format_reward.__qualname__ = "regex_format"
    return regex_format_reward


# One number and nothing else ("7", "7.", "-3.5"): the default tiny task's answer format.
NUMBER_PATTERN = r"[-+]?\d+(?:\.\d+)?\.?"

number_format = regex_format(NUMBER_PATTERN)
number_format.__name__ = number_format.__qualname__ = "number_format"
number_format.__doc__ = "1.0 where the response is one number (a trailing period allowed), e.g. `7.`, else 0.0."

# `<think>` then `<answer>`, each closed once, with no nested or repeated tags (DeepSeek-R1, arXiv:2501.12948).
THINK_ANSWER_PATTERN = r"<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>"

think_answer_format = regex_format(THINK_ANSWER_PATTERN)
think_answer_format.__name__ = think_answer_format.__qualname__ = "think_answer_format"
think_answer_format.__doc__ = (
    "1.0 where the response is exactly `<think>...</think>` followed by `<answer>...</answer>`, else 0.0."
)
