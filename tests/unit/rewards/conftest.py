"""A scripted stdlib HTTP server for exercising the remote reward client against real sockets."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# script(call_number starting at 1, request payload) -> (status, body bytes, delay before answering in seconds)
Script = Callable[[int, dict], tuple[int, bytes, float]]


def ok_lengths(payload: dict) -> bytes:
    """A correct reply: each response's length in characters as its reward."""
    return json.dumps({"rewards": [float(len(r)) for r in payload["responses"]]}).encode()


@dataclass
class ScriptedServer:
    url: str
    calls: list[dict] = field(default_factory=list)  # request payloads in arrival order

    @property
    def count(self) -> int:
        return len(self.calls)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that timed out closes its socket; the late write fails, which is the point of the test.
        pass


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Script], ScriptedServer]]:
    """Start servers that follow a script; all are stopped (and sleeping handlers released) at teardown."""
    release = threading.Event()
    servers: list[ThreadingHTTPServer] = []

    def start(script: Script) -> ScriptedServer:
        lock = threading.Lock()
        state = ScriptedServer(url="")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    state.calls.append(payload)
                    number = state.count
                status, body, delay = script(number, payload)
                if delay:
                    release.wait(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}/score"
        return state

    yield start
    release.set()
    for server in servers:
        server.shutdown()
        server.server_close()
