"""The HTTP client for an OpenAI-compatible server: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

Async (httpx), so one thread keeps `concurrency` requests in flight. Failures that pass (a connection dropped,
a timeout, 429 and 5xx answers) are retried with exponential backoff and jitter, honouring Retry-After; failures
that do not pass (a wrong URL at the start, an unknown model, a missing route, a refused key) become one line
that names the fix. The API key is read from the environment variable the config names, sent only in the
Authorization header, and scrubbed from every message this module builds.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from routerllm_cli.errors import ConfigError, RunFailed

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_S = 1.0  # first wait; doubles on every retry
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0
CONNECT_TIMEOUT_S = 10.0


class EndpointConfigError(ConfigError):
    """The endpoint cannot serve this run as configured (wrong URL, unknown model, missing route): exit 2."""


class EndpointUnavailable(RunFailed):
    """The endpoint stopped answering during a run, after every retry: exit 1; answers so far are saved."""


@dataclass
class Reply:
    """One answer as the server gave it."""

    text: str
    finish_reason: str | None
    stop_reason: Any  # vLLM names the stop string or token that ended it; other servers leave it out
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # from sending the request to the whole answer back, retries included
    attempts: int


class EndpointClient:
    """One endpoint (an `EndpointSpec`). Use as `async with EndpointClient(spec) as client:`."""

    def __init__(self, spec: Any):
        self.spec = spec
        self.url = spec.url
        self._key = self._read_key(spec.api_key_env)
        self._http: Any = None

    @staticmethod
    def _read_key(env: str | None) -> str | None:
        if env is None:
            return None
        key = os.environ.get(env)
        if not key:
            raise EndpointConfigError(f"endpoint.api_key_env names {env}, which is not set in the environment",
                                      fix=f"export {env}=... (the key the server was started with), or drop "
                                      "api_key_env for a server without a key")
        return key

    async def __aenter__(self) -> "EndpointClient":
        import httpx

        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        timeout = httpx.Timeout(self.spec.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.spec.timeout_s))
        limits = httpx.Limits(max_connections=self.spec.concurrency, max_keepalive_connections=self.spec.concurrency)
        self._http = httpx.AsyncClient(base_url=self.url + "/", headers=headers, timeout=timeout, limits=limits,
                                       follow_redirects=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    def scrub(self, text: str) -> str:
        """`text` with the API key cut out (a server may echo a header back in an error)."""
        return text.replace(self._key, "***") if self._key else text

    # -- the routes ---------------------------------------------------------------------------------------

    async def served_models(self) -> list[str]:
        """The ids `/v1/models` lists. A refused connection or a wrong path here is a config error: nothing has
        run yet, so the URL is what is wrong."""
        import httpx

        try:
            response = await self._http.get("models")
        except httpx.TransportError as exc:
            raise EndpointConfigError(f"cannot reach the endpoint {self.url}: {self._reason(exc)}",
                                      fix=f"check the URL (the API base, ending in /v1) and that the server is "
                                      f"up: curl {self.url}/models") from None
        if response.status_code in (401, 403):
            raise self._refused(response)
        if response.status_code >= 400:
            raise EndpointConfigError(
                f"{self.url}/models answered HTTP {response.status_code}: not an OpenAI-compatible API base",
                fix="point the URL at the API base, e.g. http://HOST:8000/v1 for vLLM or http://HOST:30000/v1 "
                "for SGLang")
        try:
            data = response.json()
            return [str(m["id"]) for m in data.get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EndpointConfigError(f"{self.url}/models did not answer an OpenAI model list",
                                      fix="point the URL at the API base of an OpenAI-compatible server") from None

    async def check(self) -> list[str]:
        """Make sure the server lists the configured model; returns what it lists."""
        served = await self.served_models()
        if self.spec.served_model not in served:
            listed = ", ".join(served[:12]) + (f" and {len(served) - 12} more" if len(served) > 12 else "")
            raise EndpointConfigError(
                f"{self.url} does not serve {self.spec.served_model!r}; it lists {listed or 'no model'}",
                fix="use a listed name after # in --model openai:URL#NAME (or endpoint.served_model)")
        return served

    async def complete(self, prompt: str, *, max_tokens: int, stop: list[str], sampling: dict[str, Any]) -> Reply:
        """A base prompt continued (`/v1/completions`)."""
        body = {"model": self.spec.served_model, "prompt": prompt, "max_tokens": max_tokens, **sampling}
        if stop:
            body["stop"] = list(stop)
        data, seconds, attempts = await self._post("completions", body)
        choice = self._choice(data)
        return self._reply(data, choice, choice.get("text"), seconds, attempts)

    async def chat(self, message: str, *, max_tokens: int, sampling: dict[str, Any]) -> Reply:
        """One user turn answered (`/v1/chat/completions`); the server applies the model's chat template."""
        body = {"model": self.spec.served_model, "messages": [{"role": "user", "content": message}],
                "max_tokens": max_tokens, **sampling}
        data, seconds, attempts = await self._post("chat/completions", body)
        choice = self._choice(data)
        return self._reply(data, choice, (choice.get("message") or {}).get("content"), seconds, attempts)

    # -- plumbing -----------------------------------------------------------------------------------------

    async def _post(self, route: str, body: dict[str, Any]) -> tuple[dict[str, Any], float, int]:
        import httpx

        start = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = await self._http.post(route, json=body)
            except httpx.TransportError as exc:
                reason = self._reason(exc)
            else:
                if response.status_code < 400:
                    try:
                        return response.json(), time.perf_counter() - start, attempt
                    except ValueError:
                        reason = "an answer that is not JSON"
                elif response.status_code in RETRY_STATUS:
                    reason = f"HTTP {response.status_code}"
                    retry_after = _retry_after(response)
                else:
                    raise self._failure(route, response)
            if attempt > self.spec.max_retries:
                raise EndpointUnavailable(
                    f"the endpoint {self.url} stopped answering /{route}: {reason}, "
                    f"{attempt} attempt{'s' if attempt > 1 else ''} over {time.perf_counter() - start:.0f} s")
            wait = min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S) * random.uniform(0.8, 1.2)
            await asyncio.sleep(max(wait, retry_after or 0.0))

    def _reason(self, exc: BaseException) -> str:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            import socket

            chain, cause = [], exc.__cause__ or exc.__context__
            while cause is not None and len(chain) < 8:  # httpx wraps the socket error; the cause says which
                chain.append(cause)
                cause = cause.__cause__ or cause.__context__
            if any(isinstance(c, ConnectionRefusedError) for c in chain) or "refused" in str(exc).lower():
                return "connection refused"
            if any(isinstance(c, socket.gaierror) for c in chain):
                return "the host name does not resolve"
            return f"cannot connect ({self.scrub(str(exc))[:120]})"
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer within {self.spec.timeout_s:g} s ({type(exc).__name__})"
        return f"{type(exc).__name__}: {self.scrub(str(exc))[:120]}"

    def _message(self, response: Any) -> str:
        try:
            data = response.json()
            err = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
            text = err.get("message", err) if isinstance(err, dict) else err
        except ValueError:
            text = response.text
        return self.scrub(" ".join(str(text).split()))[:240]

    def _refused(self, response: Any) -> EndpointConfigError:
        env = self.spec.api_key_env
        return EndpointConfigError(
            f"{self.url} refused the request (HTTP {response.status_code}): {self._message(response)}",
            fix=(f"check the key in ${env}" if env else
                 "set endpoint.api_key_env to the name of the environment variable that holds the key"))

    def _failure(self, route: str, response: Any) -> Exception:
        status = response.status_code
        message = self._message(response)
        if status in (401, 403):
            return self._refused(response)
        if status in (404, 405) and "model" in message.lower() and "exist" in message.lower():
            return EndpointConfigError(f"{self.url} does not serve {self.spec.served_model!r}: {message}",
                                       fix="use a name the server lists at /v1/models")
        if status in (404, 405):
            other, style = ("chat/completions", "instruct") if route == "completions" else ("completions", "base")
            return EndpointConfigError(
                f"{self.url} has no /{route} route (HTTP {status})",
                fix=f"set bench.prompt_style: {style} (sends /{other} instead), or serve the model with an engine "
                "that has both routes")
        return RunFailed(f"{self.url}/{route} rejected a request (HTTP {status}): {message}",
                         fix="check the server's log; a prompt longer than its --max-model-len is a common cause")

    @staticmethod
    def _choice(data: dict[str, Any]) -> dict[str, Any]:
        try:
            return data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise RunFailed("the endpoint answered without choices",
                            fix="check that the server is OpenAI-compatible") from None

    @staticmethod
    def _reply(data: dict[str, Any], choice: dict[str, Any], text: Any, seconds: float, attempts: int) -> Reply:
        usage = data.get("usage") or {}
        return Reply(text=text or "", finish_reason=choice.get("finish_reason"), stop_reason=choice.get("stop_reason"),
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0), seconds=seconds, attempts=attempts)


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S) if value is not None else None
    except ValueError:
        return None
