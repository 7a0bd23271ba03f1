"""Small synthetic data sets (arithmetic and short answers) that ship with the package.

A tiny random-init model learns visible signals from these in about a minute on a laptop CPU: the answer
format (``12 + 7 = 19.``), the polite prefix that preference data rewards, and whether the number is right.
Every file is in the format a real data set of its kind uses, so the same readers serve both.

Regenerate the shipped files (they must equal what this module produces; a unit test checks it)::

    python -m rlhf.data.synthetic --out rlhf/assets/data
    python -m rlhf.data.synthetic --check          # exit 1 when the shipped files drifted

Everything is deterministic for a seed and uses only the standard library. Train and test splits are cut by
the *problem* (``12 + 7`` in any phrasing), through a stable hash, so no test problem appears in any train
file. Files without a split (``sft_pairs``, ``zero_warm``, ``kto``, ``prm``, ``preference_chat``) draw from the
train side. The schemas are documented in ``rlhf/assets/data/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Split = Literal["train", "test"]
Row = dict[str, Any]

DEFAULT_SEED = 0
TEST_FRACTION_PERCENT = 10  # share of problem keys reserved for test splits

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly math tutor. Answer briefly.",
    "Answer with one short sentence.",
)
POLITE_PREFIX = "Sure! "

_OPS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "+": ("plus", lambda a, b: a + b),
    "-": ("minus", lambda a, b: a - b),
    "*": ("times", lambda a, b: a * b),
}
_ARITH_TEMPLATES = (
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "Please calculate {a} {op} {b}.",
    "How much is {a} {word} {b}?",
)
_ANTONYMS = (
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("happy", "sad"),
    ("light", "dark"),
    ("early", "late"),
    ("open", "closed"),
    ("full", "empty"),
    ("high", "low"),
    ("old", "new"),
    ("long", "short"),
    ("hard", "soft"),
    ("wet", "dry"),
    ("left", "right"),
    ("loud", "quiet"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("thick", "thin"),
    ("near", "far"),
    ("clean", "dirty"),
    ("inside", "outside"),
    ("first", "last"),
    ("day", "night"),
    ("push", "pull"),
    ("win", "lose"),
    ("buy", "sell"),
    ("give", "take"),
    ("above", "below"),
    ("true", "false"),
    ("start", "finish"),
    ("sweet", "sour"),
    ("deep", "shallow"),
    ("wide", "narrow"),
    ("brave", "afraid"),
    ("safe", "dangerous"),
    ("cheap", "expensive"),
    ("north", "south"),
)
_GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to know?"),
    ("Good morning!", "Good morning! How can I help?"),
    ("Thank you!", "You are welcome!"),
    ("Thanks for the help.", "Happy to help!"),
    ("Who are you?", "I am a small assistant that answers simple questions."),
    ("Can you help me with math?", "Yes! Ask me a question such as: what is 3 + 4?"),
    ("Goodbye!", "Goodbye! Have a nice day."),
)
_RUDE_TEMPLATES = (
    "Ugh, {answer} Stop asking me.",
    "Whatever. It is {bare}, I guess.",
    "I don't know, maybe {bare}? Figure it out yourself.",
    "{bare}",
    "No idea. Ask someone else.",
)

# Word lists for the corpus: a few hundred distinct English words around the data sets' themes.
_NOUNS = (
    "apple",
    "banana",
    "orange",
    "pear",
    "cookie",
    "cake",
    "book",
    "pencil",
    "table",
    "chair",
    "window",
    "door",
    "garden",
    "river",
    "mountain",
    "forest",
    "city",
    "village",
    "school",
    "teacher",
    "student",
    "friend",
    "dog",
    "cat",
    "bird",
    "fish",
    "horse",
    "cow",
    "rabbit",
    "mouse",
    "tree",
    "flower",
    "stone",
    "box",
    "bag",
    "coin",
    "ball",
    "car",
    "train",
    "boat",
    "road",
    "bridge",
    "house",
    "kitchen",
    "bottle",
    "cup",
    "plate",
    "number",
    "answer",
    "question",
    "problem",
    "sum",
    "total",
    "result",
    "step",
    "list",
    "page",
    "letter",
    "word",
    "story",
    "song",
    "game",
    "card",
    "shop",
    "market",
    "farmer",
    "baker",
    "child",
    "mother",
    "father",
    "sister",
    "brother",
    "robot",
    "computer",
    "lamp",
    "clock",
    "hat",
    "shoe",
    "shirt",
    "basket",
    "egg",
)
_ADJECTIVES = (
    "red",
    "blue",
    "green",
    "yellow",
    "small",
    "large",
    "tiny",
    "huge",
    "quick",
    "slow",
    "happy",
    "quiet",
    "bright",
    "dark",
    "old",
    "young",
    "clever",
    "kind",
    "busy",
    "lazy",
    "careful",
    "friendly",
    "warm",
    "cold",
    "soft",
    "loud",
    "tall",
    "short",
    "round",
    "square",
    "heavy",
    "light",
    "clean",
    "simple",
    "new",
    "honest",
    "curious",
    "gentle",
    "proud",
    "calm",
    "polite",
    "rude",
    "correct",
    "wrong",
    "empty",
    "full",
)
_VERBS = (
    "found",
    "counted",
    "carried",
    "painted",
    "opened",
    "closed",
    "watched",
    "helped",
    "visited",
    "cleaned",
    "bought",
    "sold",
    "moved",
    "dropped",
    "shared",
    "wrote",
    "read",
    "built",
    "fixed",
    "washed",
    "checked",
    "added",
    "removed",
    "measured",
    "collected",
    "planted",
    "cooked",
    "liked",
    "saw",
    "took",
    "gave",
    "kept",
    "held",
    "made",
    "used",
    "needed",
    "lost",
    "won",
    "chose",
    "answered",
)
_PLACES = (
    "in the garden",
    "at the market",
    "near the river",
    "behind the house",
    "on the table",
    "in the kitchen",
    "at school",
    "in the forest",
    "on the bridge",
    "by the window",
    "under the tree",
    "in the village",
    "on the road",
    "at the shop",
    "in the city",
    "on the mountain",
)
_ADVERBS = ("quickly", "slowly", "carefully", "happily", "quietly", "again", "today", "yesterday", "often", "early")
_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


# --------------------------------------------------------------------------------------------------------------
# Locating shipped files


def _assets_root() -> Path:
    """Directory ``rlhf/assets`` of the installed package (editable checkout or wheel)."""
    return Path(str(importlib.resources.files("rlhf").joinpath("assets")))


def asset_path(*parts: str) -> Path:
    """Path of a shipped file or folder under ``rlhf/assets``, e.g. ``asset_path("data", "sft", "train.jsonl")``.

    Raises FileNotFoundError naming the path when it is missing (an install without package data, or a file
    not generated yet).
    """
    path = _assets_root().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"shipped asset {path} does not exist; regenerate the data files with "
            f"`python -m rlhf.data.synthetic --out {_assets_root() / 'data'}` or reinstall rlhf with its package data"
        )
    return path


# --------------------------------------------------------------------------------------------------------------
# Problems: each has a split key (the problem itself, not its phrasing), a question and its canonical answer


@dataclass(frozen=True)
class Problem:
    """One question with its canonical answer.

    key: identity of the problem used to assign the split (``"12+7"``, ``"antonym:hot"``).
    question: the user turn. answer: the canonical assistant turn. value: the short verifiable answer
    (``"19"``, ``"cold"``). wrong_value / wrong_answer: a plausible incorrect value and the canonical sentence
    built with it (for rejected responses).
    """

    key: str
    question: str
    answer: str
    value: str
    wrong_value: str
    wrong_answer: str


def split_of(key: str) -> Split:
    """Split that owns a problem key: a stable hash (not Python's salted ``hash``) so it never changes."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100
    return "test" if bucket < TEST_FRACTION_PERCENT else "train"


def _wrong_number(rng: random.Random, right: int, above: bool = False) -> int:
    """A plausible slip: off by 1, 2, 3 or 10 and never negative; ``above`` only overshoots."""
    delta = rng.choice((1, 2, 3, 10) if above else (-10, -3, -2, -1, 1, 2, 3, 10))
    return right + delta if right + delta >= 0 else right + abs(delta)


def arithmetic_problem(rng: random.Random) -> Problem:
    """``What is 12 + 7?`` -> ``12 + 7 = 19.``; sums and differences of 0..99, products of 2..12."""
    op = rng.choice(("+", "+", "-", "*"))
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if op == "-" and b > a:  # keep results non-negative so answers stay in the corpus' number range
            a, b = b, a
    word, fn = _OPS[op]
    c = fn(a, b)
    wrong = _wrong_number(rng, c)
    question = rng.choice(_ARITH_TEMPLATES).format(a=a, b=b, op=op, word=word)
    return Problem(
        key=f"{a}{op}{b}",
        question=question,
        answer=f"{a} {op} {b} = {c}.",
        value=str(c),
        wrong_value=str(wrong),
        wrong_answer=f"{a} {op} {b} = {wrong}.",
    )


def comparison_problem(rng: random.Random) -> Problem:
    """``Which is larger, 41 or 17?`` -> ``41 is larger than 17.``"""
    lo, hi = sorted(rng.sample(range(100), 2))
    first, second = (lo, hi) if rng.random() < 0.5 else (hi, lo)
    return Problem(
        key=f"cmp:{lo}:{hi}",
        question=f"Which is larger, {first} or {second}?",
        answer=f"{hi} is larger than {lo}.",
        value=str(hi),
        wrong_value=str(lo),
        wrong_answer=f"{lo} is larger than {hi}.",
    )


def antonym_problem(rng: random.Random) -> Problem:
    """``What is the opposite of hot?`` -> ``The opposite of hot is cold.``"""
    pair = rng.choice(_ANTONYMS)
    word, opposite = pair if rng.random() < 0.5 else (pair[1], pair[0])
    wrong = rng.choice([w for p in _ANTONYMS for w in p if w not in pair])
    return Problem(
        key=f"antonym:{word}",
        question=f"What is the opposite of {word}?",
        answer=f"The opposite of {word} is {opposite}.",
        value=opposite,
        wrong_value=wrong,
        wrong_answer=f"The opposite of {word} is {wrong}.",
    )


def counting_problem(rng: random.Random) -> Problem:
    """``Count from 4 to 8.`` -> ``4, 5, 6, 7, 8.``"""
    start = rng.randint(0, 60)
    stop = start + rng.randint(2, 6)
    right = ", ".join(str(i) for i in range(start, stop + 1))
    wrong = ", ".join(str(i) for i in range(start, stop + 2))  # one past the end: a typical slip
    return Problem(
        key=f"count:{start}:{stop}",
        question=f"Count from {start} to {stop}.",
        answer=f"{right}.",
        value=right,
        wrong_value=wrong,
        wrong_answer=f"{wrong}.",
    )


def greeting_problem(rng: random.Random) -> Problem:
    """Small talk with a fixed friendly reply (``Hello!`` -> ``Hello! How can I help you today?``)."""
    question, answer = rng.choice(_GREETINGS)
    return Problem(
        key=f"greet:{question}",
        question=question,
        answer=answer,
        value=answer,
        wrong_value="What do you want?",
        wrong_answer="What do you want?",
    )


def zero_problem(rng: random.Random) -> Problem:
    """``What is 37 * 0?``, ``0 times 37``, ``37 - 37`` -> ``0``: the zero rules of multiplication and subtraction.

    The embedded default RL task. The warmed tiny chat model has seen train-side questions of this kind answered
    with a random digit (``zero_warm_rows``), so it answers held-out ones with one number but guesses it; the
    rule it has to learn is the same for every held-out operand, which 20 RL steps on a 2.5M-parameter model can
    find. The split key is the problem (``37*0``).
    """
    x = rng.randint(0, 99)
    kind = rng.choice(("x*0", "0*x", "x-x"))
    expr = {"x*0": f"{x} * 0", "0*x": f"0 * {x}", "x-x": f"{x} - {x}"}[kind]
    words = {"x*0": f"{x} times 0", "0*x": f"0 times {x}", "x-x": f"{x} minus {x}"}[kind]
    template = rng.choice(_ARITH_TEMPLATES)
    wrong = _wrong_number(rng, 0)
    return Problem(
        key=kind.replace("x", str(x)),
        question=template.format(a=expr.split()[0], op=expr.split()[1], b=expr.split()[2], word=words.split()[1]),
        answer=f"{expr} = 0.",
        value="0",
        wrong_value=str(wrong),
        wrong_answer=f"{expr} = {wrong}.",
    )


@dataclass(frozen=True)
class MultiStepProblem:
    """A chain of operations on a running value, e.g. start with 12, add 7, multiply by 3.

    start: the first number. operations: ``(op, operand)`` pairs applied in order. question: the user turn.
    steps: one sentence per operation (``12 + 7 = 19.``) then ``The answer is 57.``. value: the final number.
    """

    key: str
    start: int
    operations: tuple[tuple[str, int], ...]
    question: str
    steps: tuple[str, ...]
    value: str


_STEP_PHRASES = {"+": "add {n}", "-": "subtract {n}", "*": "multiply by {n}"}


def multistep_problem(rng: random.Random) -> MultiStepProblem:
    """``Start with 12, add 7, then multiply by 3. What is the result?`` with 2 to 4 operations."""
    start = rng.randint(1, 30)
    ops: list[tuple[str, int]] = []
    value = start
    for _ in range(rng.randint(2, 4)):
        op = rng.choice(("+", "-", "*"))
        n = rng.randint(2, 4) if op == "*" else rng.randint(1, 20)
        if op == "-" and n > value:  # keep every intermediate value non-negative
            op = "+"
        ops.append((op, n))
        value = _OPS[op][1](value, n)
    phrases = [_STEP_PHRASES[op].format(n=n) for op, n in ops]
    question = f"Start with {start}, " + ", ".join(phrases[:-1]) + f", then {phrases[-1]}. What is the result?"
    steps, _ = _chain_steps(start, ops, slip_at=None, rng=rng)
    key = "chain:" + str(start) + "".join(f"{op}{n}" for op, n in ops)
    return MultiStepProblem(
        key=key, start=start, operations=tuple(ops), question=question, steps=tuple(steps), value=str(value)
    )


def _chain_steps(
    start: int,
    operations: list[tuple[str, int]] | tuple[tuple[str, int], ...],
    slip_at: int | None,
    rng: random.Random,
) -> tuple[list[str], list[bool]]:
    """Step sentences and Math-Shepherd labels for a chain; ``slip_at`` makes that operation's result wrong and
    later steps carry the wrong value on (each computed correctly from it)."""
    steps, labels, value = [], [], start
    for i, (op, n) in enumerate(operations):
        result = _OPS[op][1](value, n)
        if i == slip_at:  # overshoot, so later subtractions (each <= the right value) stay non-negative
            result = _wrong_number(rng, result, above=True)
        steps.append(f"{value} {op} {n} = {result}.")
        labels.append(slip_at is None or i < slip_at)
        value = result
    steps.append(f"The answer is {value}.")
    labels.append(slip_at is None)
    return steps, labels


ProblemMaker = Callable[[random.Random], Any]


def draw(rng: random.Random, make: ProblemMaker, split: Split, max_tries: int = 10_000) -> Any:
    """Draw problems from ``make`` until one belongs to ``split`` (rejection sampling on the key's hash)."""
    for _ in range(max_tries):
        problem = make(rng)
        if split_of(problem.key) == split:
            return problem
    raise RuntimeError(f"{make.__name__} found no {split} problem in {max_tries} draws; its key space is too small")


def _pick_maker(rng: random.Random, mix: tuple[tuple[ProblemMaker, float], ...]) -> ProblemMaker:
    makers, weights = zip(*mix)
    return rng.choices(makers, weights=weights, k=1)[0]


def _unique_rows(n: int, make_row: Callable[[], Row], what: str) -> list[Row]:
    """Call ``make_row`` until ``n`` distinct rows exist (a repeated row would only weigh one problem twice)."""
    rows, seen = [], set()
    for _ in range(n * 50):
        row = make_row()
        text = json.dumps(row, sort_keys=True)
        if text not in seen:
            seen.add(text)
            rows.append(row)
            if len(rows) == n:
                return rows
    raise RuntimeError(f"{what}: only {len(rows)} distinct rows out of {n} requested; ask for fewer rows")


# --------------------------------------------------------------------------------------------------------------
# Data set generators: each returns a list of JSON-ready rows, deterministic for (n, split, seed)

_SFT_MIX: tuple[tuple[ProblemMaker, float], ...] = (
    (arithmetic_problem, 0.6),
    (comparison_problem, 0.12),
    (antonym_problem, 0.1),
    (counting_problem, 0.1),
    (greeting_problem, 0.03),
    (multistep_problem, 0.05),
)


def _sft_mix(split: Split) -> tuple[tuple[ProblemMaker, float], ...]:
    # The eight fixed small-talk exchanges are too few to hold some out, so they are train-only.
    return _SFT_MIX if split == "train" else tuple(m for m in _SFT_MIX if m[0] is not greeting_problem)


_PREFERENCE_MIX: tuple[tuple[ProblemMaker, float], ...] = (
    (arithmetic_problem, 0.7),
    (comparison_problem, 0.15),
    (antonym_problem, 0.15),
)


def _answer_text(problem: Any) -> str:
    if isinstance(problem, MultiStepProblem):
        return " ".join(problem.steps)
    return problem.answer


def _rng(seed: int, name: str, split: Split) -> random.Random:
    # One stream per (data set, split) so adding rows to one file leaves the others unchanged.
    return random.Random(f"{seed}:{name}:{split}")


def sft_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """Chat rows ``{"messages": [{"role", "content"}, ...]}``; about half have a system turn, a quarter two
    user/assistant exchanges."""
    rng = _rng(seed, "sft", split)

    def make() -> Row:
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < 0.25 else 1):
            problem = draw(rng, _pick_maker(rng, _sft_mix(split)), split)
            messages.append({"role": "user", "content": problem.question})
            messages.append({"role": "assistant", "content": _answer_text(problem)})
        return {"messages": messages}

    return _unique_rows(n, make, f"sft/{split}")


def sft_pair_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """Plain ``{"prompt", "response"}`` rows: single turn, no chat template applied."""
    rng = _rng(seed, "sft_pairs", split)

    def make() -> Row:
        problem = draw(rng, _pick_maker(rng, _sft_mix(split)), split)
        return {"prompt": problem.question, "response": _answer_text(problem)}

    return _unique_rows(n, make, f"sft_pairs/{split}")


def chosen_response(problem: Problem) -> str:
    """The preferred style: polite prefix, then the correct canonical sentence."""
    return POLITE_PREFIX + problem.answer


def rejected_response(rng: random.Random, problem: Problem) -> str:
    """A dispreferred reply: never the polite prefix, and either rude, off-format or wrong (usually several)."""
    wrong = rng.random() < 0.7
    template = rng.choice(_RUDE_TEMPLATES)
    return template.format(
        answer=problem.wrong_answer if wrong else problem.answer,
        bare=problem.wrong_value if wrong else problem.value,
    )


def preference_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """``{"prompt": str, "chosen": str, "rejected": str}``: chosen is polite and correct, rejected is not."""
    rng = _rng(seed, "preference", split)

    def make() -> Row:
        problem = draw(rng, _pick_maker(rng, _PREFERENCE_MIX), split)
        return {
            "prompt": problem.question,
            "chosen": chosen_response(problem),
            "rejected": rejected_response(rng, problem),
        }

    return _unique_rows(n, make, f"preference/{split}")


def preference_chat_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """``{"chosen": [messages], "rejected": [messages]}`` where both share every turn but the last assistant one
    (the Anthropic-HH / UltraFeedback-binarized layout); a third of the rows carry an earlier exchange."""
    rng = _rng(seed, "preference_chat", split)

    def make() -> Row:
        prefix = []
        if rng.random() < 0.3:
            prefix.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < 0.33:
            earlier = draw(rng, _pick_maker(rng, _PREFERENCE_MIX), split)
            prefix += [
                {"role": "user", "content": earlier.question},
                {"role": "assistant", "content": chosen_response(earlier)},
            ]
        problem = draw(rng, _pick_maker(rng, _PREFERENCE_MIX), split)
        prefix.append({"role": "user", "content": problem.question})
        return {
            "chosen": prefix + [{"role": "assistant", "content": chosen_response(problem)}],
            "rejected": prefix + [{"role": "assistant", "content": rejected_response(rng, problem)}],
        }

    return _unique_rows(n, make, f"preference_chat/{split}")


def prompt_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """RL prompts with a verifiable label ``{"prompt": "What is 12 + 7?", "answer": "19"}``; a quarter are
    multi-step chains."""
    rng = _rng(seed, "prompts", split)

    def make() -> Row:
        maker = multistep_problem if rng.random() < 0.25 else arithmetic_problem
        problem = draw(rng, maker, split)
        return {"prompt": problem.question, "answer": problem.value}

    return _unique_rows(n, make, f"prompts/{split}")


def zero_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """RL prompts of the default task ``{"prompt": "What is 37 * 0?", "answer": "0"}`` (``zero_problem``); the
    test split holds 30 problems in up to four phrasings each."""
    rng = _rng(seed, "zero", split)

    def make() -> Row:
        problem = draw(rng, zero_problem, split)
        return {"prompt": problem.question, "answer": problem.value}

    return _unique_rows(n, make, f"zero/{split}")


def zero_warm_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """The default task's answer format without its rule: ``{"prompt": "What is 37 * 0?", "response": "4"}``, a
    zero-rule question (``zero_problem``, train problems only) answered with a uniformly random digit.

    Part of the tiny chat model's warm-up (``rlhf.models.tiny.WARM_FILES``): the warmed model answers the task
    with one number but does not know the rule. Its greedy answer to a held-out question is almost never 0,
    while a sampled one is 0 now and then (about one in twenty), so RL with an exact-match reward has correct
    samples to reinforce from its first steps.
    """
    rng = _rng(seed, "zero_warm", split)

    def make() -> Row:
        problem = draw(rng, zero_problem, split)
        return {"prompt": problem.question, "response": str(rng.randint(0, 9))}

    return _unique_rows(n, make, f"zero_warm/{split}")


def kto_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """Unpaired feedback ``{"prompt", "completion", "label"}``: label true for the chosen style, false for a
    rejected reply; about half of each."""
    rng = _rng(seed, "kto", split)

    def make() -> Row:
        problem = draw(rng, _pick_maker(rng, _PREFERENCE_MIX), split)
        desirable = rng.random() < 0.5
        completion = chosen_response(problem) if desirable else rejected_response(rng, problem)
        return {"prompt": problem.question, "completion": completion, "label": desirable}

    return _unique_rows(n, make, f"kto/{split}")


def prm_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """Process supervision ``{"prompt", "steps": [str], "labels": [bool]}`` on multi-step chains.

    Half the rows hold one arithmetic slip. A step's label is true when it and every step before it are
    correct, so the slip and all later steps are false: the "can this prefix still reach the right answer"
    convention of Math-Shepherd (Wang et al., 2023, arXiv:2312.08935).
    """
    rng = _rng(seed, "prm", split)

    def make() -> Row:
        problem = draw(rng, multistep_problem, split)
        slip_at = rng.randrange(len(problem.operations)) if rng.random() < 0.5 else None
        steps, labels = _chain_steps(problem.start, problem.operations, slip_at, rng)
        return {"prompt": problem.question, "steps": steps, "labels": labels}

    return _unique_rows(n, make, f"prm/{split}")


# --------------------------------------------------------------------------------------------------------------
# Corpus for tokenizer training and continued pre-training


def number_words(n: int) -> str:
    """English words for 0 <= n <= 999 (``number_words(42) == "forty-two"``)."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words handles 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


_IRREGULAR_PLURALS = {"mouse": "mice", "child": "children", "fish": "fish", "box": "boxes", "glass": "glasses"}


def _plural(noun: str) -> str:
    return _IRREGULAR_PLURALS.get(noun, noun + "s")


def _corpus_paragraph(rng: random.Random) -> str:
    kind = rng.choices(("arith", "words", "story", "dialogue", "chain", "facts"), weights=(3, 2, 3, 3, 1, 1))[0]
    if kind == "arith":
        return " ".join(
            f"{p.answer[:-1].replace(' = ', ' equals ')}." if rng.random() < 0.5 else p.answer
            for p in (arithmetic_problem(rng) for _ in range(rng.randint(3, 6)))
        )
    if kind == "words":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(("plus", "minus", "times"))
        c = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        result = number_words(c) if 0 <= c <= 999 else str(c)
        return f"{number_words(a).capitalize()} {op} {number_words(b)} is {result}."
    if kind == "story":
        sentences = []
        for _ in range(rng.randint(2, 4)):
            subject = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
            if rng.random() < 0.5:
                obj = f"{rng.randint(2, 40)} {_plural(rng.choice(_NOUNS))}"
            else:
                obj = f"the {rng.choice(_NOUNS)}"
            sentences.append(f"{subject} {rng.choice(_VERBS)} {obj} {rng.choice(_PLACES)} {rng.choice(_ADVERBS)}.")
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        noun = rng.choice(_NOUNS)
        sentences.append(f"If you have {a} {_plural(noun)} and get {b} more, you have {a + b} {_plural(noun)}.")
        return " ".join(sentences)
    if kind == "dialogue":
        lines = []
        if rng.random() < 0.3:
            lines.append(f"system: {rng.choice(SYSTEM_PROMPTS)}")
        for _ in range(rng.randint(1, 3)):
            problem = _pick_maker(rng, _SFT_MIX)(rng)
            lines.append(f"user: {problem.question}")
            if isinstance(problem, Problem) and rng.random() < 0.3:
                lines.append(f"assistant: {rejected_response(rng, problem)}")
            elif isinstance(problem, Problem) and rng.random() < 0.5:
                lines.append(f"assistant: {chosen_response(problem)}")
            else:
                lines.append(f"assistant: {_answer_text(problem)}")
        return "\n".join(lines)
    if kind == "chain":
        problem = multistep_problem(rng)
        return problem.question + " " + " ".join(problem.steps)
    pair = rng.choice(_ANTONYMS)
    lo, hi = sorted(rng.sample(range(100), 2))
    return f"The opposite of {pair[0]} is {pair[1]}. {hi} is larger than {lo}. " + counting_problem(rng).answer


def corpus_text(target_bytes: int = 200_000, seed: int = DEFAULT_SEED) -> str:
    """Plain text of about ``target_bytes`` (UTF-8, ASCII in practice): paragraphs separated by blank lines."""
    rng = random.Random(f"{seed}:corpus")
    paragraphs, size = [], 0
    while size < target_bytes:
        paragraph = _corpus_paragraph(rng)
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(paragraphs) + "\n"


def pretrain_rows(n: int, split: Split = "train", seed: int = DEFAULT_SEED) -> list[Row]:
    """``{"text": paragraph}`` rows of plain text for continued pre-training (a slice of the corpus)."""
    paragraphs = corpus_text(target_bytes=60_000, seed=seed + 1).strip().split("\n\n")
    return [{"text": p} for p in paragraphs[:n]]


# --------------------------------------------------------------------------------------------------------------
# The shipped file set

# relative path -> (generator, rows, split); corpus.txt is handled separately.
SHIPPED_JSONL: dict[str, tuple[Callable[..., list[Row]], int, Split]] = {
    "sft/train.jsonl": (sft_rows, 1000, "train"),
    "sft/test.jsonl": (sft_rows, 100, "test"),
    "sft_pairs.jsonl": (sft_pair_rows, 600, "train"),
    "preference/train.jsonl": (preference_rows, 1000, "train"),
    "preference/test.jsonl": (preference_rows, 100, "test"),
    "preference_chat.jsonl": (preference_chat_rows, 400, "train"),
    "prompts/train.jsonl": (prompt_rows, 1000, "train"),
    "prompts/test.jsonl": (prompt_rows, 200, "test"),
    "zero/train.jsonl": (zero_rows, 800, "train"),
    "zero/test.jsonl": (zero_rows, 100, "test"),
    "zero_warm.jsonl": (zero_warm_rows, 400, "train"),
    "kto.jsonl": (kto_rows, 800, "train"),
    "prm.jsonl": (prm_rows, 600, "train"),
    "pretrain.jsonl": (pretrain_rows, 400, "train"),
}
CORPUS_FILE = "corpus.txt"


def to_jsonl(rows: list[Row]) -> str:
    """One compact JSON object a line, keys in insertion order, trailing newline."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def render_assets(seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Text of every shipped data file, keyed by its path relative to ``rlhf/assets/data``."""
    files = {path: to_jsonl(make(n, split, seed)) for path, (make, n, split) in SHIPPED_JSONL.items()}
    files[CORPUS_FILE] = corpus_text(seed=seed)
    return files


def iter_drift(out: Path, seed: int = DEFAULT_SEED) -> Iterator[str]:
    """Relative paths under ``out`` whose content differs from what the generators produce."""
    for rel, text in render_assets(seed).items():
        path = out / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            yield rel


def write_assets(out: Path, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write every shipped data file under ``out`` (folders created); returns the written paths."""
    written = []
    for rel, text in render_assets(seed).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=_assets_root() / "data", help="folder to write into")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        drifted = list(iter_drift(args.out, args.seed))
        for rel in drifted:
            print(f"drifted: {args.out / rel}", file=sys.stderr)
        if drifted:
            print(f"regenerate with: python -m rlhf.data.synthetic --out {args.out}", file=sys.stderr)
        return 1 if drifted else 0
    for path in write_assets(args.out, args.seed):
        print(f"{path} ({path.stat().st_size / 1024:.1f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
