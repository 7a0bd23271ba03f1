from fractions import Fraction

import pytest

from rlhf.rewards.functions import (
    extract_answer,
    math_exact_match,
    numeric_format,
    parse_number,
    regex_format,
    think_answer_format,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", Fraction(42)),  # trailing sentence period is not a decimal point
        ("so x = -3", Fraction(-3)),
        ("5-3=2", Fraction(2)),  # '-' after a digit is subtraction, the last number is 2
        ("5-3", Fraction(3)),  # ... so this is 3, not -3
        ("It costs $1,234.50 in total", Fraction(246_900, 200)),  # thousands comma, decimal
        ("1,2,3", Fraction(3)),  # commas not in groups of three separate a list
        ("about 2/3 of them", Fraction(2, 3)),
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
        ("\\boxed{-\\dfrac{1}{2}}", Fraction(-1, 2)),
        ("First 3, then \\boxed{1{,}000} and 7 remain", Fraction(1000)),  # the box wins over the last number
        ("\\boxed{x = 5}", Fraction(5)),
        ("\\boxed{\\text{12 apples}}", Fraction(12)),
        ("The answer is 8. Check: 8 + 1 = 9", Fraction(8)),  # the phrase wins over the last number
        ("Final answer: −7", Fraction(-7)),  # unicode minus
        ("The answer is: $-5$", Fraction(-5)),
        ("worked out\n#### 72", Fraction(72)),
        ("<think>2+2 is 4, or 5?</think><answer>4</answer>", Fraction(4)),
        ("1e3", Fraction(1000)),
        ("pi is 3.14.", Fraction(314, 100)),
        ("1/0 then 2", Fraction(2)),  # a zero denominator is skipped, not an error
        ("no digits here", None),
        ("\\boxed{12", Fraction(12)),  # unbalanced box: fall back to the last number
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", Fraction(42)),
        ("-3", Fraction(-3)),
        ("1,234.50", Fraction(2469, 2)),
        ("$5", Fraction(5)),
        ("50%", Fraction(50)),
        ("3/4", Fraction(3, 4)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("7.", Fraction(7)),
        (".5", Fraction(1, 2)),
        ("1.5E2", Fraction(150)),
        ("2.5e-3", Fraction(1, 400)),
        ("0.001", Fraction(1, 1000)),
        ("0e99999999", Fraction(0)),
        ("4 5", None),
        ("abc", None),
        ("", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_math_exact_match_batch():
    responses = [
        "12 + 7 = 19. The answer is 19.",  # right
        "I get 3.50",  # 3.50 == 7/2 numerically: right
        "The answer is 8",  # wrong (reference 7)
        "nothing numeric",  # no number: 0
        "Total: \\boxed{1,000,000}",  # right, thousands separators
        "The answer is -2",  # right, negative
    ]
    answers = ["19", "7/2", "7", "4", "#### 1000000", -2]
    assert math_exact_match([""] * 6, responses, answers) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_math_exact_match_numeric_references():
    # int and float references compare exactly with the parsed response.
    assert math_exact_match(["", ""], ["it is 2.5", "it is 3"], [2.5, 3]) == [1.0, 1.0]


def test_math_exact_match_rejects_non_numeric_reference():
    with pytest.raises(ValueError, match=r"row 1 is not a number: 'yes'"):
        math_exact_match(["", ""], ["1", "2"], ["1", "yes"])


def test_math_exact_match_length_mismatch():
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        math_exact_match(["", ""], ["1", "2"], ["1"])


def test_numeric_format_hand_values():
    responses = ["12 ab", "1234", "abc", "", "   ", " 7 \n", "1.5"]
    # "12 ab": 2 digits of 4 non-space chars = 0.5; "1.5": 2 of 3 = 0.666...; empty/whitespace: 0.
    expected = [0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 2 / 3]
    assert numeric_format([""] * 7, responses) == pytest.approx(expected)


def test_numeric_format_ignores_non_ascii_digits():
    # "²" is a unicode digit but not something a parser reads as a number: 1 of 2 characters.
    assert numeric_format([""], ["2²"]) == [0.5]


def test_regex_format_full_match_and_strip():
    fn = regex_format(r"\d+")
    assert fn(["", "", "", ""], ["123", " 123\n", "123a", "a123"]) == [1.0, 1.0, 0.0, 0.0]
    strict = regex_format(r"\d+", strip=False)
    assert strict([""], [" 123\n"]) == [0.0]
    assert fn.__name__ == "regex_format"
    assert fn.pattern.pattern == r"\d+"


def test_regex_format_invalid_pattern():
    with pytest.raises(ValueError, match=r"invalid pattern '\('"):
        regex_format("(")


def test_think_answer_format():
    responses = [
        "<think>2 + 2 = 4\nok</think>\n<answer>4</answer>",  # multi-line think, newline between: ok
        "<think>a</think><answer>b</answer>",
        "<answer>b</answer>",  # no think
        "<think>a</think><answer>b</answer><answer>c</answer>",  # repeated answer tag
        "<think>a<think>b</think></think><answer>c</answer>",  # nested think
        "<think>a</think><answer>b</answer> trailing words",
    ]
    assert think_answer_format([""] * 6, responses) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert think_answer_format.__name__ == "think_answer_format"


def test_numbers_beyond_the_bounds_are_cheap_and_stand_for_huge_or_tiny():
    """Sampled text writes numbers like "1E4322363": exactly, a 4.3-million-digit integer (over a minute of
    big-integer arithmetic for one response, measured), and Python refuses integers of over 4300 digits. Past
    the bounds a number stands as +-10**MAX_EXPONENT or 10**-MAX_EXPONENT: unequal to any real answer."""
    import time

    from rlhf.rewards.functions import MAX_EXPONENT, numeric_closeness

    huge, tiny = Fraction(10) ** MAX_EXPONENT, Fraction(1, 10**MAX_EXPONENT)
    assert parse_number("1e4322363") == huge and parse_number("-9.5E99999999999") == -huge
    assert parse_number("3e-4322363") == tiny and parse_number("1" * 5000) == huge
    assert parse_number("1e400") == huge and parse_number("1e399") == Fraction(10) ** 399  # exact below the bound
    assert parse_number("1e4322363/1e4322363") == 1  # a bounded quotient, not an error
    # The response of the measured minute: answers are found and scored in milliseconds.
    response = "+9250EE E-850/.9/1117/21e-63805-12084 5677E01 -,421117e80-83E42.,+6E6E+9+755.239 E4322363 1e4322363"
    tic = time.monotonic()
    assert math_exact_match([""], [response], answer=["0"]) == [0.0]
    assert numeric_closeness([""], [response], answer=["0"]) == [0.0]  # too far for a float: no credit
    assert numeric_closeness([""], ["1e250"], answer=["0"])[0] == pytest.approx(1e-250)
    assert time.monotonic() - tic < 1.0
