"""The sandbox layers the tests run on: the built-in layer always, bubblewrap where it can run here.

CI installs bubblewrap and sets REQUIRE_BWRAP_TESTS=1 once bubblewrap runs there, so the bubblewrap tests are
never skipped quietly.
"""

from __future__ import annotations

import os

import pytest

from routerllm_cli.sandbox.layers import bwrap_status

_status = bwrap_status()
if os.environ.get("REQUIRE_BWRAP_TESTS") == "1" and not _status.usable:
    raise RuntimeError(f"REQUIRE_BWRAP_TESTS=1 but {_status.reason}")

LAYERS = ["builtin", pytest.param("bwrap", marks=pytest.mark.skipif(not _status.usable,
                                                                   reason=f"bubblewrap: {_status.reason}"))]
