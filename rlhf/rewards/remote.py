"""HTTP client for reward servers speaking the protocol in `rlhf/rewards/README.md`.

    reward = RemoteReward("http://127.0.0.1:8000/score", batch_size=64, timeout_s=30)
    rewards = reward(prompts, responses, {"answer": answers})      # torch.float32 [B]
    rewards, metrics = reward.score(prompts, responses, {"answer": answers})

Batches of `batch_size` rows go out concurrently on a few pooled connections and come back in order. Connection
errors, timeouts, HTTP 5xx/429 and malformed replies are retried with exponential backoff and jitter; other 4xx
are raised at once with the server's message. Every batch succeeds or fails within `max_batch_wall_s`: each
attempt runs on its own daemon thread and is abandoned at its deadline, so a server that stalls or trickles its
reply a byte at a time (which keeps the socket alive and defeats socket timeouts) cannot hold the caller.
"""

from __future__ import annotations

import json
import math
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from urllib.parse import urljoin, urlparse

import requests
import torch
from requests.adapters import HTTPAdapter

from rlhf.rewards.loader import RewardError

__all__ = ["RemoteReward", "RemoteRewardError"]

_BODY_PREVIEW_CHARS = 1000
# An attempt is abandoned this long after timeout_s: the socket's own timeout errors (more specific) come first.
_WATCHDOG_GRACE_S = 0.1
# Errors in the request itself: retrying cannot help.
_NON_RETRYABLE_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)


class RemoteRewardError(RewardError):
    """A reward server could not score a batch (after retries, or at once for a rejected request)."""


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix; `retry_after_s` is the server's hint, if any."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Rejected(Exception):
    """The server refused the request (4xx other than 429): a bug in the request, not a transient failure."""


def _snippet(content: bytes) -> str:
    text = content.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _BODY_PREVIEW_CHARS else text[:_BODY_PREVIEW_CHARS] + "..."


def _server_message(content: bytes) -> str:
    """The `error` text of a protocol error body, else the start of the raw body."""
    try:
        payload = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return _snippet(payload["error"].encode())
    return _snippet(content)


def _json_default(value: object) -> object:
    # numpy / torch scalars and arrays often sneak into data columns.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None  # the HTTP-date form is rare for APIs; fall back to our own backoff


def _numbers(values: object, n: int, what: str, allow_null: bool) -> list[float]:
    """Check `values` is a list of n numbers (nulls allowed for metrics) and return them as floats."""
    if not isinstance(values, list):
        raise _Retryable(f"'{what}' is a {type(values).__name__}, expected a list of {n} numbers")
    if len(values) != n:
        raise _Retryable(f"'{what}' has {len(values)} values for {n} responses")
    out = []
    for i, v in enumerate(values):
        if v is None and allow_null:
            out.append(math.nan)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Retryable(f"'{what}'[{i}] is {v!r}, not a number")
        if not allow_null and not math.isfinite(v):
            raise _Retryable(f"'{what}'[{i}] is {v!r}, not a finite number")
        out.append(float(v))
    return out


def _parse_reply(content: bytes, n: int) -> tuple[list[float], dict[str, list[float]]]:
    """Decode `{"rewards": [n floats], "metrics": {name: [n floats]}}` (metrics optional)."""
    try:
        payload = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Retryable(f"reply is not valid JSON ({exc}): {_snippet(content)!r}") from None
    if not isinstance(payload, dict) or "rewards" not in payload:
        raise _Retryable(f"reply has no 'rewards' key: {_snippet(content)!r}")
    rewards = _numbers(payload["rewards"], n, "rewards", allow_null=False)
    metrics_in = payload.get("metrics") or {}
    if not isinstance(metrics_in, dict):
        raise _Retryable(f"'metrics' is a {type(metrics_in).__name__}, expected an object of lists")
    metrics = {str(k): _numbers(v, n, f"metrics.{k}", allow_null=True) for k, v in metrics_in.items()}
    return rewards, metrics


class RemoteReward:
    """Score (prompt, response) pairs with a remote reward server.

    Args:
        url: endpoint that accepts the POST of the protocol (e.g. "http://host:8000/score").
        batch_size: rows per request.
        timeout_s: limit for one request: connecting, and receiving the whole reply.
        max_retries: retries after the first attempt (so at most 1 + max_retries attempts per batch).
        backoff_s: delay before the first retry; doubles each retry (plus jitter), capped at backoff_max_s.
        backoff_max_s: longest delay between attempts, also the cap on a server's Retry-After.
        headers: extra HTTP headers (e.g. {"Authorization": "Bearer ..."}).
        num_workers: batches in flight at once, each on its own pooled keep-alive connection.
        name: shown in errors and metrics; defaults to the URL.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        headers: Mapping[str, str] | None = None,
        num_workers: int = 4,
        name: str | None = None,
    ):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"RemoteReward url must be http(s)://host[:port]/path, got {url!r}")
        checks = {
            "batch_size": batch_size >= 1,
            "timeout_s": timeout_s > 0,
            "max_retries": max_retries >= 0,
            "backoff_s": backoff_s >= 0,
            "backoff_max_s": backoff_max_s >= backoff_s,
            "num_workers": num_workers >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"RemoteReward({url!r}): invalid {bad}; need batch_size >= 1, timeout_s > 0, max_retries >= 0, "
                "0 <= backoff_s <= backoff_max_s, num_workers >= 1"
            )
        self.url = url
        self.name = name or url
        self.batch_size = batch_size
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        self.num_workers = num_workers
        self.retries = 0  # total retries over this client's life, for logging
        self.last_metrics: dict[str, torch.Tensor] = {}
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[requests.Session] = []  # keep-alive sessions not in use by an attempt
        self._sessions: list[requests.Session] = []
        self._pool: ThreadPoolExecutor | None = None

    # Threads, sessions and locks do not pickle; a copy sent to another process (a Ray actor) rebuilds them.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_lock", "_idle", "_sessions", "_pool"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def attempts(self) -> int:
        return 1 + self.max_retries

    @property
    def max_batch_wall_s(self) -> float:
        """Upper bound on the time one batch can take: every attempt is abandoned at its deadline (timeout_s plus
        a grace of 0.1 s) and every backoff is maximal. The client enforces it with its own clock, whatever the
        socket sees (a reply trickling in a byte at a time is cut like a silent one).
        """
        sleeps = sum(min(self.backoff_max_s, self.backoff_s * 2**k) for k in range(self.max_retries))
        return self.attempts * (self.timeout_s + _WATCHDOG_GRACE_S) + sleeps

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        with self._lock:
            self._sessions.append(session)
        return session

    def _take_session(self) -> requests.Session:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_session()

    def _give_back(self, session: requests.Session, healthy: bool) -> None:
        """An attempt's session goes back to the idle list, or is closed when the attempt was abandoned."""
        with self._lock:
            if healthy and session in self._sessions:
                self._idle.append(session)
                return
            if session in self._sessions:
                self._sessions.remove(session)
        session.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="remote-reward")
            return self._pool

    def close(self) -> None:
        """Close pooled connections and worker threads (a later call opens new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
            sessions, self._sessions, self._idle = self._sessions, [], []
        if pool is not None:
            # Batches end within max_batch_wall_s; abandoned attempts are daemon threads and are not waited for.
            pool.shutdown(wait=True, cancel_futures=True)
        for session in sessions:
            session.close()

    def __enter__(self) -> RemoteReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict:
        """GET <server>/health; returns its JSON or raises RemoteRewardError (no retries: a startup probe)."""
        health_url = urljoin(self.url, "/health")

        def probe(session: requests.Session) -> dict:
            response = session.get(health_url, headers=self.headers, timeout=self.timeout_s)
            response.raise_for_status()
            return response.json()

        try:
            return self._bounded(probe, f"health check {health_url}")
        except (requests.RequestException, ValueError, _Retryable) as exc:
            raise RemoteRewardError(f"reward server health check {health_url} failed: {exc}") from exc

    def _bounded(self, call, what: str):
        """`call(session)` on a daemon thread, abandoned after timeout_s (+ grace) with a _Retryable.

        Socket timeouts only fire while nothing arrives; this deadline holds whatever the server does.
        """
        session = self._take_session()
        box: queue.Queue = queue.Queue(maxsize=1)

        def run() -> None:
            try:
                box.put((True, call(session)))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                box.put((False, exc))

        threading.Thread(target=run, name="remote-reward-attempt", daemon=True).start()
        try:
            ok, value = box.get(timeout=self.timeout_s + _WATCHDOG_GRACE_S)
        except queue.Empty:
            # The thread may still be reading a trickle; its session is closed and never reused.
            self._give_back(session, healthy=False)
            raise _Retryable(
                f"no complete reply to the {what} within timeout_s={self.timeout_s:g}s (the server is stalled, "
                "or sends its reply too slowly)"
            ) from None
        self._give_back(session, healthy=ok)
        if not ok:
            raise value
        return value

    def _encode(self, prompts: Sequence[str], responses: Sequence[str], fields: Mapping[str, Sequence]) -> bytes:
        payload = {
            "prompts": list(prompts),
            "responses": list(responses),
            "fields": {k: list(v) for k, v in fields.items()},
        }
        try:
            return json.dumps(payload, default=_json_default, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            culprit = next((k for k, v in fields.items() if not _serializable(v)), "prompts/responses")
            raise RemoteRewardError(
                f"cannot send rows to {self.url}: field {culprit!r} is not JSON-serializable ({exc}); convert it "
                "to strings or numbers in the data pipeline"
            ) from exc

    def _attempt(self, body: bytes, n: int) -> tuple[list[float], dict[str, list[float]]]:
        """One POST, bounded by the client's clock. Raises _Retryable or _Rejected; returns rewards and metrics."""
        return self._bounded(lambda session: self._post(session, body, n), "reward request")

    def _post(self, session: requests.Session, body: bytes, n: int) -> tuple[list[float], dict[str, list[float]]]:
        start = time.monotonic()
        try:
            with session.post(
                self.url, data=body, headers=self.headers, timeout=self.timeout_s, stream=True, allow_redirects=False
            ) as reply:
                chunks = []
                for chunk in reply.iter_content(chunk_size=1 << 16):
                    chunks.append(chunk)
                    if time.monotonic() - start > self.timeout_s:
                        raise _Retryable(f"reply still arriving after timeout_s={self.timeout_s}s")
                content = b"".join(chunks)
                status, headers = reply.status_code, reply.headers
        except _NON_RETRYABLE_REQUEST_ERRORS as exc:
            raise _Rejected(f"{type(exc).__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {_server_message(content)}", retry_after_s=_retry_after(headers))
        if status != 200:
            raise _Rejected(f"HTTP {status}: {_server_message(content)}")
        return _parse_reply(content, n)

    def _backoff(self, retry: int, hint: float | None) -> float:
        """Exponential backoff with jitter (half fixed, half random) so clients do not retry in lockstep."""
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (retry - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if hint is not None:
            delay = max(delay, min(hint, self.backoff_max_s))
        return delay

    def _score_batch(
        self, lo: int, body: bytes, n: int, stop: threading.Event
    ) -> tuple[list[float], dict[str, list[float]]]:
        start = time.monotonic()
        rows = f"rows {lo}..{lo + n - 1}"
        last = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            try:
                return self._attempt(body, n)
            except _Rejected as exc:
                raise RemoteRewardError(
                    f"reward server {self.url} rejected {rows} ({exc}); not retried because the request itself is "
                    "at fault: check the fields the server expects and the protocol in rlhf/rewards/README.md"
                ) from None
            except _Retryable as exc:
                last = str(exc)
                hint = exc.retry_after_s
            if attempt == self.attempts:
                break
            with self._lock:
                self.retries += 1
            if stop.wait(self._backoff(attempt, hint)):
                raise RemoteRewardError(f"reward request for {rows} to {self.url} cancelled: another batch failed")
        elapsed = time.monotonic() - start
        raise RemoteRewardError(
            f"reward server {self.url} failed on {rows} after {self.attempts} attempts in {elapsed:.1f}s. Last "
            f"error: {last.rstrip('.')}. Check that the server is running and reachable (GET "
            f"{urljoin(self.url, '/health')}), read its log for this request, and raise timeout_s (now "
            f"{self.timeout_s:g}s) if scoring a batch of {n} takes longer."
        )

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        fields: Mapping[str, Sequence] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score a batch remotely. prompts, responses and every field: [B].

        Returns:
            rewards float32 [B]; metrics {name: float32 [B]} for the metric names every batch reply carried.
        """
        fields = dict(fields or {})
        total = len(prompts)
        if len(responses) != total:
            raise RewardError(f"RemoteReward {self.url}: {total} prompts but {len(responses)} responses")
        for key, column in fields.items():
            if len(column) != total:
                raise RewardError(
                    f"RemoteReward {self.url}: field {key!r} has {len(column)} values for {total} prompts"
                )
        if total == 0:
            self.last_metrics = {}
            return torch.zeros(0, dtype=torch.float32), {}
        stop = threading.Event()
        futures: list[Future] = []
        for lo in range(0, total, self.batch_size):
            hi = min(lo + self.batch_size, total)
            body = self._encode(prompts[lo:hi], responses[lo:hi], {k: v[lo:hi] for k, v in fields.items()})
            futures.append(self._executor().submit(self._score_batch, lo, body, hi - lo, stop))
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            stop.set()
            for f in pending:
                f.cancel()
            raise failed[0].exception()
        results = [f.result() for f in futures]
        rewards = torch.tensor([r for batch, _ in results for r in batch], dtype=torch.float32)
        common = set(results[0][1]).intersection(*(set(m) for _, m in results[1:]))
        metrics = {k: torch.tensor([v for _, m in results for v in m[k]], dtype=torch.float32) for k in sorted(common)}
        self.last_metrics = metrics
        return rewards, metrics

    def __call__(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        fields: Mapping[str, Sequence] | None = None,
    ) -> torch.Tensor:
        """Rewards float32 [B]; per-sample metrics of the call are kept in `last_metrics`."""
        return self.score(prompts, responses, fields)[0]

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r}, batch_size={self.batch_size}, timeout_s={self.timeout_s:g})"


def _serializable(value: object) -> bool:
    try:
        json.dumps(list(value), default=_json_default, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
