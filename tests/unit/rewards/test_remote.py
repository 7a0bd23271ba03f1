import json
import pickle
import socket
import time

import numpy as np
import pytest
import torch

from rlhf.rewards.functions import math_exact_match, numeric_format
from rlhf.rewards.remote import RemoteReward, RemoteRewardError
from rlhf.rewards.server import serve

from .conftest import ok_lengths

FAST = dict(timeout_s=1.0, max_retries=2, backoff_s=0.01, backoff_max_s=0.05)  # 3 attempts, tiny sleeps


@pytest.fixture
def reference_server():
    """The reference server on a free port; yields a function starting one for a given reward function."""
    started = []

    def start(fn):
        server, thread = serve(fn, "127.0.0.1", 0)
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/score"

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_reference_server_matches_direct_call_and_keeps_order(reference_server):
    url = reference_server(numeric_format)
    # Response i has i digits of 10 characters: reward i/10, distinct for every row so order is visible.
    responses = ["1" * i + "a" * (10 - i) for i in range(11)]
    prompts = [f"p{i}" for i in range(11)]
    with RemoteReward(url, batch_size=3, num_workers=4, **FAST) as client:  # 4 batches: 3 + 3 + 3 + 2
        out = client(prompts, responses)
    assert out.dtype == torch.float32 and out.shape == (11,)
    assert out.tolist() == pytest.approx(numeric_format(prompts, responses))
    assert out.tolist() == pytest.approx([i / 10 for i in range(11)])


def test_reference_server_passes_fields(reference_server):
    url = reference_server(math_exact_match)
    responses = ["The answer is 19", "8", "\\boxed{3/4}", "-2", "no", "1,000"]
    answers = ["19", "7", "0.75", "-2", "1", "1000"]
    client = RemoteReward(url, batch_size=4, **FAST)
    out = client([""] * 6, responses, {"answer": answers})
    assert out.tolist() == math_exact_match([""] * 6, responses, answers) == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert client.retries == 0
    assert client.health() == {"status": "ok", "function": "math_exact_match"}
    client.close()


def test_reference_server_missing_field_is_rejected_without_retry(reference_server):
    url = reference_server(math_exact_match)
    client = RemoteReward(url, **FAST)
    with pytest.raises(RemoteRewardError, match=r"rejected rows 0..0 \(HTTP 400: .*needs field\(s\) \['answer'\]"):
        client(["q"], ["1"], {"label": ["1"]})
    assert client.retries == 0


def test_reference_server_function_failure_is_retried_then_reported(reference_server):
    url = reference_server(math_exact_match)  # a non-numeric reference makes the function raise
    client = RemoteReward(url, **FAST)
    with pytest.raises(RemoteRewardError, match=r"after 3 attempts.*HTTP 500.*math_exact_match.*not a number"):
        client(["q"], ["1"], {"answer": ["yes"]})
    assert client.retries == 2


def test_empty_batch_makes_no_request(scripted_server):
    server = scripted_server(lambda n, p: (200, ok_lengths(p), 0))
    out = RemoteReward(server.url)([], [], {"answer": []})
    assert out.shape == (0,) and server.count == 0


def test_metrics_are_concatenated_in_order(scripted_server):
    def script(n, payload):
        responses = payload["responses"]
        body = {
            "rewards": [1.0] * len(responses),
            "metrics": {"chars": [len(r) for r in responses], "n": [n] * len(responses)},
        }
        if n == 1:
            body["metrics"]["only_first"] = [0.0] * len(responses)  # missing from other batches: dropped
        return 200, json.dumps(body).encode(), 0

    server = scripted_server(script)
    client = RemoteReward(server.url, batch_size=2, num_workers=1, **FAST)  # one worker: batches arrive in order
    rewards, metrics = client.score(["", "", ""], ["a", "bbb", "cc"])
    assert rewards.tolist() == [1.0, 1.0, 1.0]
    assert sorted(metrics) == ["chars", "n"]
    assert metrics["chars"].tolist() == [1.0, 3.0, 2.0] and metrics["n"].tolist() == [1.0, 1.0, 2.0]
    assert client.last_metrics["chars"].tolist() == [1.0, 3.0, 2.0]


def test_timeout_then_success(scripted_server):
    # The first call sleeps 5 s, past timeout_s=0.3; the retry is answered at once.
    server = scripted_server(lambda n, p: (200, ok_lengths(p), 5.0 if n == 1 else 0))
    client = RemoteReward(server.url, timeout_s=0.3, max_retries=2, backoff_s=0.01, backoff_max_s=0.02)
    start = time.monotonic()
    out = client(["", ""], ["ab", "abcd"])
    assert time.monotonic() - start < 2.0
    assert out.tolist() == [2.0, 4.0]
    assert server.count == 2 and client.retries == 1


def test_500_twice_then_success(scripted_server):
    server = scripted_server(lambda n, p: (500, b'{"error": "busy"}', 0) if n <= 2 else (200, ok_lengths(p), 0))
    client = RemoteReward(server.url, **FAST)
    assert client(["", ""], ["x", "yyy"]).tolist() == [1.0, 3.0]
    assert server.count == 3 and client.retries == 2  # two failed attempts, success on the third


def test_429_is_retried(scripted_server):
    server = scripted_server(lambda n, p: (429, b"slow down", 0) if n == 1 else (200, ok_lengths(p), 0))
    client = RemoteReward(server.url, **FAST)
    assert client([""], ["abc"]).tolist() == [3.0]
    assert server.count == 2


def test_500_always_fails_in_bounded_time(scripted_server):
    server = scripted_server(lambda n, p: (500, b'{"error": "database down"}', 0))
    client = RemoteReward(server.url, timeout_s=0.5, max_retries=3, backoff_s=0.05, backoff_max_s=0.1)
    start = time.monotonic()
    with pytest.raises(RemoteRewardError) as info:
        client(["q"], ["r"])
    elapsed = time.monotonic() - start
    # Sleeps at most 0.05 + 0.1 + 0.1 = 0.25 s between 4 instant attempts.
    assert elapsed < 1.5
    message = str(info.value)
    assert server.url in message and "after 4 attempts" in message
    assert "HTTP 500" in message and "database down" in message and "/health" in message
    assert server.count == 4 and client.retries == 3


def test_timeouts_always_fail_in_bounded_time(scripted_server):
    server = scripted_server(lambda n, p: (200, ok_lengths(p), 5.0))
    client = RemoteReward(server.url, timeout_s=0.2, max_retries=1, backoff_s=0.01, backoff_max_s=0.01)
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"after 2 attempts.*ReadTimeout.*raise timeout_s \(now 0.2s\)"):
        client(["q"], ["r"])
    assert time.monotonic() - start < client.max_batch_wall_s < 2.0
    assert server.count == 2


def test_unreachable_server():
    # A port that was just free: nothing listens there, so every attempt is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RemoteReward(f"http://127.0.0.1:{port}/score", **FAST)
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=rf"127.0.0.1:{port}/score failed .* after 3 attempts.*ConnectionError"):
        client(["q"], ["r"])
    assert time.monotonic() - start < 1.0


def test_malformed_json_is_retried_then_succeeds(scripted_server):
    server = scripted_server(lambda n, p: (200, b"{not json", 0) if n == 1 else (200, ok_lengths(p), 0))
    client = RemoteReward(server.url, **FAST)
    assert client([""], ["ab"]).tolist() == [2.0]
    assert server.count == 2


def test_malformed_json_always(scripted_server):
    server = scripted_server(lambda n, p: (200, b"<html>oops</html>", 0))
    client = RemoteReward(server.url, **FAST)
    with pytest.raises(RemoteRewardError, match=r"after 3 attempts.*not valid JSON.*<html>oops</html>"):
        client([""], ["ab"])
    assert server.count == 3


@pytest.mark.parametrize(
    "body, pattern",
    [
        ({"rewards": [1.0, 2.0, 3.0]}, r"'rewards' has 3 values for 2 responses"),
        ({"scores": [1.0, 2.0]}, r"reply has no 'rewards' key"),
        ({"rewards": [1.0, "2"]}, r"'rewards'\[1\] is '2', not a number"),
        ({"rewards": [1.0, None]}, r"'rewards'\[1\] is None, not a number"),
        ({"rewards": [1.0, 2.0], "metrics": {"m": [1.0]}}, r"'metrics.m' has 1 values for 2 responses"),
    ],
)
def test_wrong_replies_are_retried_then_reported(scripted_server, body, pattern):
    server = scripted_server(lambda n, p: (200, json.dumps(body).encode(), 0))
    client = RemoteReward(server.url, **FAST)
    with pytest.raises(RemoteRewardError, match=rf"after 3 attempts.*{pattern}"):
        client(["", ""], ["a", "b"])
    assert server.count == 3


def test_nan_reward_is_rejected(scripted_server):
    server = scripted_server(lambda n, p: (200, b'{"rewards": [NaN]}', 0))
    with pytest.raises(RemoteRewardError, match=r"'rewards'\[0\] is nan, not a finite number"):
        RemoteReward(server.url, **FAST)([""], [""])


def test_400_is_not_retried(scripted_server):
    server = scripted_server(lambda n, p: (400, b'{"error": "field answer missing"}', 0))
    client = RemoteReward(server.url, **FAST)
    with pytest.raises(RemoteRewardError, match=r"rejected rows 0..0 \(HTTP 400: .*field answer missing.*not retried"):
        client([""], [""])
    assert server.count == 1 and client.retries == 0


def test_failure_in_one_batch_stops_the_call(scripted_server):
    # Rows 2-3 (second batch) always fail with 404; the call raises that batch's error.
    def script(n, payload):
        return (404, b"no such route", 0) if payload["prompts"][0] == "p2" else (200, ok_lengths(payload), 0)

    server = scripted_server(script)
    client = RemoteReward(server.url, batch_size=2, **FAST)
    with pytest.raises(RemoteRewardError, match=r"rejected rows 2..3 \(HTTP 404"):
        client(["p0", "p1", "p2", "p3", "p4"], ["a", "b", "c", "d", "e"])


def test_fields_and_headers_are_sent(scripted_server):
    server = scripted_server(lambda n, p: (200, ok_lengths(p), 0))
    client = RemoteReward(server.url, batch_size=2, num_workers=1, **FAST)
    client(["p0", "p1", "p2"], ["a", "b", "c"], {"answer": ["1", "2", "3"], "id": np.array([7, 8, 9])})
    assert server.calls == [
        {"prompts": ["p0", "p1"], "responses": ["a", "b"], "fields": {"answer": ["1", "2"], "id": [7, 8]}},
        {"prompts": ["p2"], "responses": ["c"], "fields": {"answer": ["3"], "id": [9]}},
    ]


def test_unserializable_field(scripted_server):
    server = scripted_server(lambda n, p: (200, ok_lengths(p), 0))
    with pytest.raises(RemoteRewardError, match=r"field 'obj' is not JSON-serializable"):
        RemoteReward(server.url)([""], [""], {"ok": ["1"], "obj": [object()]})
    assert server.count == 0


def test_pickled_client_works(scripted_server):
    server = scripted_server(lambda n, p: (200, ok_lengths(p), 0))
    client = RemoteReward(server.url, **FAST)
    client([""], ["warm"])  # opens sessions and threads, which must not travel
    clone = pickle.loads(pickle.dumps(client))
    assert clone([""], ["abc"]).tolist() == [3.0]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(url="localhost:8000"), "must be http"),
        (dict(url="http://h/score", batch_size=0), r"invalid \['batch_size'\]"),
        (dict(url="http://h/score", timeout_s=0), r"invalid \['timeout_s'\]"),
        (dict(url="http://h/score", backoff_s=2.0, backoff_max_s=1.0), r"invalid \['backoff_max_s'\]"),
    ],
)
def test_constructor_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        RemoteReward(**kwargs)


def test_max_batch_wall_s():
    # 4 attempts x (1 s + 0.1 s grace) + backoffs min(8, 0.5 * 2^k) for k = 0, 1, 2: 0.5 + 1 + 2 = 7.9 s.
    client = RemoteReward("http://h/score", timeout_s=1.0, max_retries=3, backoff_s=0.5, backoff_max_s=8.0)
    assert client.max_batch_wall_s == pytest.approx(4.4 + 3.5)
