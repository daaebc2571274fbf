"""The hash that says a .venv is current: of pyproject.toml and scripts/setup.sh, the two files that decide what
scripts/setup.sh installs (routerllm itself is installed editable, so code changes need no reinstall)."""

import hashlib
from pathlib import Path

root = Path(__file__).resolve().parents[1]
digest = hashlib.sha256()
for name in ("pyproject.toml", "scripts/setup.sh"):
    digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
print(digest.hexdigest())
