"""The reward client's own deadline: servers that keep the socket alive without ever finishing a reply."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rlhf.rewards.remote import RemoteReward, RemoteRewardError

REPLY = b'{"rewards": [1.0]}'


def _trickle_server(stop: threading.Event, head: bytes, body: bytes, gap_s: float) -> tuple[socket.socket, int]:
    """A loopback server that sends `head` at once, then `body` one byte every `gap_s` seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.5)
            try:
                conn.recv(65536)  # the request (small enough for one read)
                conn.sendall(head)
                for byte in body:
                    if stop.wait(gap_s):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the client gave up and closed its end

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.fixture
def trickle() -> Iterator:
    stop = threading.Event()
    listeners: list[socket.socket] = []

    def start(head: bytes, body: bytes, gap_s: float) -> str:
        listener, port = _trickle_server(stop, head, body, gap_s)
        listeners.append(listener)
        return f"http://127.0.0.1:{port}/score"

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


def _headers(length: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize(
    "part",
    ["body", "status line and headers"],
)
def test_trickling_server_fails_within_the_documented_bound(trickle, part):
    # Each byte arrives 0.3 s after the last, well inside the 1 s socket timeout, so the socket never times out;
    # the whole reply would take 0.3 s x ~80 bytes = 24 s. The client must give up at its own deadline.
    if part == "body":
        url = trickle(_headers(len(REPLY)), REPLY, 0.3)
    else:
        url = trickle(b"", _headers(len(REPLY)) + REPLY, 0.3)
    client = RemoteReward(url, timeout_s=1.0, max_retries=1, backoff_s=0.05, backoff_max_s=0.05)
    # Bound: 2 attempts x (1 s + 0.1 s grace) + one backoff of at most 0.05 s = 2.25 s.
    assert client.max_batch_wall_s == pytest.approx(2.25)
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"after 2 attempts.*stalled, or sends its reply too slowly"):
        client(["q"], ["r"])
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < client.max_batch_wall_s + 0.5
    client.close()
    # Abandoned attempts are daemon threads: they can never keep the process alive at exit.
    assert all(t.daemon for t in threading.enumerate() if t.name == "remote-reward-attempt")


def test_trickle_does_not_poison_later_calls(trickle, scripted_server):
    from tests.unit.rewards.conftest import ok_lengths

    good = scripted_server(lambda n, p: (200, ok_lengths(p), 0))
    slow = RemoteReward(trickle(_headers(len(REPLY)), REPLY, 0.3), timeout_s=0.5, max_retries=0)
    with pytest.raises(RemoteRewardError):
        slow(["q"], ["r"])
    client = RemoteReward(good.url, timeout_s=0.5, max_retries=0)
    assert client(["", ""], ["ab", "abc"]).tolist() == [2.0, 3.0]
    # Sessions are reused between calls when attempts succeed.
    assert client(["", ""], ["a", "abcd"]).tolist() == [1.0, 4.0]
    assert len(client._sessions) == 1


def test_health_is_bounded_too(trickle):
    url = trickle(b"", _headers(2) + b"{}", 0.3)
    client = RemoteReward(url, timeout_s=0.5, max_retries=0)
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match="health check"):
        client.health()
    assert time.monotonic() - start < 0.5 + 0.1 + 0.4
