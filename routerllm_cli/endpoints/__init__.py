"""Models served elsewhere behind an OpenAI-compatible API (vLLM, SGLang, `transformers serve`, ...).

`bench` and `compare` treat such a model as one more generation source: the same problems, prompt styles, stop
sequences, greedy settings, run folders, resume and sandbox as a model routerllm loads itself. Nothing here
imports the HTTP client until a request is made, so config validation and `--help` stay instant.

- this module: the `openai:URL#MODEL` syntax and the checks a config can do without the network;
- `client.py`: the async HTTP client (bounded concurrency, retries with backoff, one-line errors);
- `source.py`: the generation source `run_bench` iterates, and what an endpoint's answers cost.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SCHEME = "openai:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_endpoint_model(text: object) -> bool:
    return isinstance(text, str) and text.strip().lower().startswith(SCHEME)


def parse_model_url(text: str) -> tuple[str, str]:
    """`openai:http://host:8000/v1#meta-llama/Llama-3.1-405B-Instruct` -> (API base URL, served model name).
    Raises ValueError with a message that names the fix."""
    body = text.strip()[len(SCHEME):]
    url, sep, served = body.partition("#")
    if not sep or not served.strip():
        raise ValueError("an endpoint model is written openai:URL#MODEL, e.g. "
                         "openai:http://10.0.0.1:8000/v1#meta-llama/Llama-3.1-405B-Instruct (the name after # is "
                         "the one the server lists in /v1/models)")
    return normalize_url(url), served.strip()


def normalize_url(url: str) -> str:
    """The API base without a trailing slash; a bare host gets `/v1`. Credentials or a query in the URL are
    refused: they would be written into run.json (the key belongs in the variable named by api_key_env)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("endpoint url must look like http://HOST:PORT/v1 (the API base of the server)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("endpoint url must not carry credentials or a query: put the key in an environment "
                         "variable and name it in endpoint.api_key_env")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("endpoint url has a port that is not a number: write it like http://HOST:8000/v1") from None
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def check_env_name(name: str) -> str:
    """api_key_env holds the NAME of an environment variable; a value that cannot be one is refused without
    echoing it (it may be the key itself)."""
    if not _ENV_NAME.match(name or ""):
        raise ValueError("api_key_env is not a variable name - fix: write the name of the environment variable "
                         "that holds the key (e.g. VLLM_API_KEY), never the key itself")
    return name


def display_name(served_model: str) -> str:
    """The short name of a served model for run folders and tables: the last part of its id or path."""
    return served_model.rstrip("/").rsplit("/", 1)[-1] or served_model
