"""HTTP for the OpenAI-compatible adapter: one ``requests`` session, its timeouts, the API key and retries.

Retrying is urllib3's ``Retry`` mounted on the session: connection errors,
timeouts and the statuses in ``RETRY_STATUS`` are retried up to
``max_retries`` times with jittered exponential backoff, or after the
server's ``Retry-After`` when it sends one; every wait is capped at
``max_backoff``. POST is retried like GET: scoring calls and seeded
generations ask the same thing again, and the response cache keeps what
finished. What is still failing after the last attempt, and every other
error status, reaches the caller as one line naming the URL.

The API key is read from an environment variable into a header and nowhere
else: not the adapter's name, repr, errors or logs (``Secret`` prints as ***).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, ReadTimeoutError
from urllib3.util.retry import Retry

from evalkit.errors import EvalkitError

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class Secret:
    """Holds the API key; prints as *** so no repr, log line or traceback local shows it."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    def __bool__(self) -> bool:
        return bool(self._value)

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__


class RouteNotFound(Exception):
    """A 404: a route the server lacks, which the adapter turns into a 'does not support' error."""


class _CappedRetry(Retry):
    """urllib3's Retry, with the server's Retry-After capped at ``backoff_max`` as every other wait is.

    A proxy asking for an hour must not stall a run; an unreadable
    Retry-After falls back to the backoff instead of failing the call.
    """

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        try:
            seconds = super().get_retry_after(response)
        except InvalidHeader:
            return None
        return None if seconds is None else min(seconds, self.backoff_max)


class Transport:
    """JSON calls to one server: ``get``/``post`` a path under ``base_url``, retried, with the API key's header.

    ``pool_size`` is the number of connections kept open: the adapter's
    thread-pool width, so concurrent calls never wait for a connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        pool_size: int = 8,
    ) -> None:
        if max_retries < 0 or timeout <= 0:
            raise EvalkitError(f"need max_retries >= 0 and timeout > 0, got {max_retries} and {timeout}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self._api_key = Secret(os.environ.get(api_key_env))
        retry = _CappedRetry(
            total=max_retries,
            status_forcelist=RETRY_STATUS,
            allowed_methods=frozenset({"GET", "POST"}),
            backoff_factor=backoff,
            backoff_jitter=backoff,  # concurrent calls refused together do not all come back together
            backoff_max=max_backoff,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last reply comes back, to be told in one line
        )
        pool = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=retry)
        self._session = requests.Session()
        self._session.mount("http://", pool)
        self._session.mount("https://", pool)

    def get(self, path: str) -> dict:
        return self._request("GET", path, None)

    def post(self, path: str, payload: dict) -> dict:
        return self._request("POST", path, payload)

    def _request(self, method: str, path: str, payload: dict | None) -> dict:
        url = self.base_url + path
        try:
            reply = self._session.request(method, url, json=payload, headers=self._headers(), timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise self._gave_up(url, "timed out" if _timed_out(err) else "refused the connection") from None
        if reply.status_code < 400:
            try:
                return reply.json()
            except ValueError:
                raise EvalkitError(f"{url} answered {reply.status_code} with a body that is not JSON") from None
        if reply.status_code == 404:
            raise RouteNotFound(url)
        if reply.status_code in (401, 403):
            raise EvalkitError(f"{url} refused the request ({reply.status_code}): set ${self.api_key_env} to a valid API key")
        if reply.status_code in RETRY_STATUS:
            raise self._gave_up(url, f"answered {reply.status_code}")
        raise EvalkitError(f"{url} answered {reply.status_code}: {_error_message(reply)}")

    def _headers(self) -> dict[str, str]:
        key = self._api_key.reveal()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _gave_up(self, url: str, problem: str) -> EvalkitError:
        return EvalkitError(
            f"{url} {problem} after {self.max_retries + 1} attempts; check that the server is running, then rerun "
            "(finished responses are cached)"
        )


def _timed_out(err: requests.RequestException) -> bool:
    """Whether the last attempt timed out: requests reports a read timeout whose retries ran out as a
    ConnectionError around urllib3's MaxRetryError, so its reason is looked at too."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.Timeout) or isinstance(reason, ReadTimeoutError)


def _error_message(reply: requests.Response) -> str:
    """The server's own one-line reason (OpenAI's {"error": {"message"}} shape or plain text)."""
    try:
        body = reply.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = reply.text
    text = " ".join(str(message).split())
    return text[:300] or reply.reason
