import http.client
import json
import os
import re
import subprocess
import sys
import time

import pytest

from rlhf.rewards.functions import math_exact_match, numeric_format
from rlhf.rewards.loader import RewardFunction
from rlhf.rewards.server import serve


@pytest.fixture
def server():
    server, thread = serve(RewardFunction(math_exact_match), "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)
    assert not thread.is_alive()


def request(server, method, path, body=None, headers=None):
    """One raw HTTP exchange; returns (status, decoded JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def score(server, payload, path="/score"):
    return request(server, "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def test_health(server):
    assert request(server, "GET", "/health") == (200, {"status": "ok", "function": "math_exact_match"})


def test_score_on_both_paths(server):
    payload = {"prompts": ["a", "b"], "responses": ["The answer is 4", "5"], "fields": {"answer": ["4", "6"]}}
    assert score(server, payload) == (200, {"rewards": [1.0, 0.0]})
    assert score(server, payload, path="/") == (200, {"rewards": [1.0, 0.0]})


def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    for answer, expected in (("4", 1.0), ("5", 0.0), ("4", 1.0)):
        body = json.dumps({"prompts": [""], "responses": ["4"], "fields": {"answer": [answer]}})
        conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert json.loads(reply.read()) == {"rewards": [expected]}
    conn.close()


@pytest.mark.parametrize(
    "payload, pattern",
    [
        ([1, 2], "must be a JSON object"),
        ({"prompts": ["a"], "responses": "b"}, "'responses' must be a list of strings"),
        ({"prompts": ["a", 3], "responses": ["b", "c"]}, "'prompts' must be a list of strings"),
        ({"prompts": ["a"], "responses": ["b", "c"]}, "1 prompts but 2 responses"),
        (
            {"prompts": ["a"], "responses": ["b"], "fields": {"answer": ["1", "2"]}},
            "field 'answer' must be a list of 1",
        ),
        ({"prompts": ["a"], "responses": ["b"], "fields": []}, "'fields' must be an object"),
        ({"prompts": ["a"], "responses": ["b"], "fields": {"id": [1]}}, r"needs field\(s\) \['answer'\]"),
    ],
)
def test_bad_requests_get_400(server, payload, pattern):
    status, body = score(server, payload)
    assert status == 400 and re.search(pattern, body["error"]), body


def test_invalid_json_gets_400(server):
    status, body = request(server, "POST", "/score", b"{oops", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]


def test_function_failure_gets_500_and_server_keeps_serving(server):
    status, body = score(server, {"prompts": ["a"], "responses": ["1"], "fields": {"answer": ["yes"]}})
    assert status == 500 and "reward function 'math_exact_match' failed: ValueError" in body["error"]
    assert score(server, {"prompts": ["a"], "responses": ["1"], "fields": {"answer": ["1"]}}) == (
        200,
        {"rewards": [1.0]},
    )


def test_invalid_reward_output_gets_500():
    srv, _ = serve(lambda prompts, responses: [float("nan")] * len(responses), "127.0.0.1", 0)
    try:
        status, body = score(srv, {"prompts": ["hello"], "responses": ["x"]})
        assert status == 500 and "returned NaN at index 0" in body["error"] and "'hello'" in body["error"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_unknown_paths_get_404(server):
    assert request(server, "GET", "/nope")[0] == 404
    status, body = score(server, {"prompts": [], "responses": []}, path="/other")
    assert status == 404 and "/score" in body["error"]


def test_missing_content_length_gets_411(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    conn.putrequest("POST", "/score")
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 411 and "Content-Length" in json.loads(reply.read())["error"]
    conn.close()


def test_cli_entry_point_serves_the_function(tmp_path):
    from rlhf.rewards.remote import RemoteReward

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "rlhf.rewards.server", "--fn", "rlhf.rewards.functions:numeric_format", "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "server exited before it started"
        port = int(re.search(r"http://127.0.0.1:(\d+)/score", line).group(1))
        with RemoteReward(f"http://127.0.0.1:{port}/score", timeout_s=5, max_retries=0) as client:
            assert client.health()["function"] == "numeric_format"
            assert client(["", ""], ["12ab", "7"]).tolist() == numeric_format(["", ""], ["12ab", "7"]) == [0.5, 1.0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
