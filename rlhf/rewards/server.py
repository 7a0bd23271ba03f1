"""Reference reward server: serve any reward function over the HTTP protocol of `rlhf/rewards/README.md`.

Stdlib only (`http.server.ThreadingHTTPServer`), so it runs wherever rlhf is installed.

    # one machine (1 GPU or CPU): serve, then score with RemoteReward("http://127.0.0.1:8000/score")
    python -m rlhf.rewards.server --fn rlhf.rewards.functions:math_exact_match --host 127.0.0.1 --port 8000

    # a factory with keyword arguments, from a file, reachable from other nodes
    python -m rlhf.rewards.server --fn my_rewards.py:make_scorer --kwargs '{"strict": true}' --host 0.0.0.0

    # Slurm: a CPU job next to the training job
    srun --ntasks=1 --cpus-per-task=8 python -m rlhf.rewards.server --fn my_rewards.py:score --host 0.0.0.0

Endpoints: POST / or /score (score a batch), GET /health. The function may be called from several request
threads at once; guard any shared state it keeps.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rlhf.rewards.loader import RewardFieldError, RewardFunction, load_reward_function

__all__ = ["make_handler", "serve", "main"]

log = logging.getLogger(__name__)

SCORE_PATHS = ("/", "/score")
MAX_BODY_BYTES = 256 * 1024 * 1024  # a 64-row batch is kilobytes; anything this large is a client bug


class _BadRequest(Exception):
    """The request does not follow the protocol; answered with HTTP 400 and this message."""


def _parse_request(body: bytes) -> tuple[list[str], list[str], dict[str, list]]:
    """Validate `{"prompts": [...], "responses": [...], "fields": {...}}` and return its three parts."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _BadRequest("body must be a JSON object with 'prompts', 'responses' and optional 'fields'")
    prompts, responses = payload.get("prompts"), payload.get("responses")
    fields = payload.get("fields")
    fields = {} if fields is None else fields
    for key, value in (("prompts", prompts), ("responses", responses)):
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise _BadRequest(f"'{key}' must be a list of strings")
    if len(prompts) != len(responses):
        raise _BadRequest(f"{len(prompts)} prompts but {len(responses)} responses")
    if not isinstance(fields, dict):
        raise _BadRequest("'fields' must be an object mapping field names to lists")
    for key, column in fields.items():
        if not isinstance(column, list) or len(column) != len(prompts):
            size = len(column) if isinstance(column, list) else type(column).__name__
            raise _BadRequest(f"field '{key}' must be a list of {len(prompts)} values, got {size}")
    return prompts, responses, fields


def make_handler(reward: RewardFunction) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `reward`."""

    class RewardHandler(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps connections alive, so a client's pooled connection is reused across batches.
        protocol_version = "HTTP/1.1"
        server_version = "rlhf-reward-server"

        def _send_json(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send_json(status, {"error": message})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._send_json(HTTPStatus.OK, {"status": "ok", "function": reward.name})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"unknown path {self.path}; use GET /health or POST /score")

        def do_POST(self) -> None:
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                self.close_connection = True  # without a length the body's end is unknown
                self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length header required")
                return
            length = int(length_header)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
                return
            body = self.rfile.read(length)  # read before answering, so a kept-alive connection stays in sync
            if self.path.split("?", 1)[0] not in SCORE_PATHS:
                self._error(HTTPStatus.NOT_FOUND, f"unknown path {self.path}; POST to one of {list(SCORE_PATHS)}")
                return
            try:
                prompts, responses, fields = _parse_request(body)
                rewards = reward(prompts, responses, fields)
            except (_BadRequest, RewardFieldError) as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            except Exception as exc:  # the reward function's own failure: report it, keep serving
                log.error("reward function %s failed:\n%s", reward.name, traceback.format_exc())
                exc = exc.__cause__ or exc  # the function's own error, not the wrapper naming it
                self._error(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"reward function '{reward.name}' failed: {type(exc).__name__}: {exc}",
                )
                return
            self._send_json(HTTPStatus.OK, {"rewards": rewards.tolist()})

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s - %s", self.address_string(), format % args)

    return RewardHandler


def serve(
    fn: Callable[..., object] | RewardFunction, host: str = "127.0.0.1", port: int = 8000
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start serving `fn` in a daemon thread; port 0 picks a free port (read it from `server.server_address`).

    Stop with `server.shutdown(); server.server_close()`.
    """
    reward = fn if isinstance(fn, RewardFunction) else RewardFunction(fn)
    server = ThreadingHTTPServer((host, port), make_handler(reward))
    # A short poll interval makes shutdown() return quickly (the default waits up to 0.5 s).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"reward-server-{reward.name}", daemon=True
    )
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a reward function over HTTP (protocol: rlhf/rewards/README.md)")
    parser.add_argument("--fn", required=True, help="'package.module:function' or 'path/to/file.py:function'")
    parser.add_argument("--kwargs", default=None, help="JSON object of keyword arguments for a factory target")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept connections from other machines")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs = json.loads(args.kwargs) if args.kwargs else {}
    if not isinstance(kwargs, dict):
        parser.error(f"--kwargs must be a JSON object, got {args.kwargs!r}")
    reward = load_reward_function(args.fn, **kwargs)
    server, thread = serve(reward, args.host, args.port)
    host, port = server.server_address[:2]
    log.info("serving reward function %s on http://%s:%d/score (GET /health)", reward.name, host, port)
    try:
        thread.join()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
