"""Real OpenAI-compatible servers for the endpoint tests: transformers' own server (`transformers serve`), started
in a subprocess on 127.0.0.1 and pinned to one model.

`python tests/openai_server.py MODEL PORT [--no-completions] [--api-key-env NAME]` runs the same server (the
`Serve` class behind `transformers serve`) as a chat-only deployment (its /v1/completions route removed, as on
providers that only offer chat) and/or behind a bearer-key check (what vLLM's `--api-key` does).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVE_CLI = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve"]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class OpenAIServer:
    """One server process. `start()` waits (bounded) until /health answers; `kill()` is SIGKILL, as a crash."""

    def __init__(self, model: str | Path, log: Path, *, port: int | None = None, no_completions: bool = False,
                 api_key_env: str | None = None):
        self.model = str(model)
        self.log = Path(log)
        self.port = port or free_port()
        self.variant = no_completions or api_key_env is not None
        self.args = (["--no-completions"] if no_completions else []) + (
            ["--api-key-env", api_key_env] if api_key_env else [])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self, timeout_s: float = 240.0) -> "OpenAIServer":
        if self.variant:
            cmd = [sys.executable, __file__, self.model, str(self.port), *self.args]
        else:
            cmd = [*SERVE_CLI, self.model, "--host", HOST, "--port", str(self.port), "--device", "cpu",
                   "--dtype", "float32", "--log-level", "warning"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def models(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/models", timeout=10) as r:
            return [m["id"] for m in json.load(r)["data"]]


def _serve_variant(model: str, port: int, no_completions: bool, api_key_env: str | None) -> None:
    from transformers.cli.serve import Serve

    class Variant(Serve):
        def start_server(self) -> None:
            app = self.server.config.app
            if no_completions:
                app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/v1/completions"]
            if api_key_env:
                from starlette.responses import JSONResponse

                expected = f"Bearer {os.environ[api_key_env]}"

                @app.middleware("http")
                async def bearer(request, call_next):  # as vLLM's --api-key: /v1 routes need the key
                    if request.url.path.startswith("/v1") and request.headers.get("authorization") != expected:
                        return JSONResponse({"error": {"message": "Unauthorized"}}, status_code=401)
                    return await call_next(request)

            super().start_server()

    Variant(model, host=HOST, port=port, device="cpu", dtype="float32", log_level="warning", non_blocking=True)


if __name__ == "__main__":
    argv = sys.argv[1:]
    key_env = argv[argv.index("--api-key-env") + 1] if "--api-key-env" in argv else None
    _serve_variant(argv[0], int(argv[1]), "--no-completions" in argv, key_env)
