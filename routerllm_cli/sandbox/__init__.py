"""Running untrusted model-generated code: HumanEval pass@1 and the router's docstring checks.

(The full statement of what is and is not defended is written below, once the tests pin it down.)
"""

from routerllm_cli.sandbox.harness import Sandbox
from routerllm_cli.sandbox.limits import ExecutionResult, SandboxLimits

__all__ = ["ExecutionResult", "Sandbox", "SandboxLimits"]


def describe(requested: str = "auto") -> dict:
    """Which layer runs generated code here and what it puts in force (runs one tiny program to find out)."""
    from routerllm_cli.errors import ConfigError
    from routerllm_cli.sandbox.layers import bwrap_status

    status = bwrap_status()
    info = {"requested": requested, "bwrap": {"path": status.path, "version": status.version,
                                              "usable": status.usable, "reason": status.reason}}
    try:
        box = Sandbox(SandboxLimits(timeout_s=10.0, layer=requested))
        probe = box.run_program("pass")
    except ConfigError as exc:
        return {**info, "layer": None, "error": exc.one_line()}
    return {**info, "layer": box.layer, "isolation": dict(box.isolation), "works": probe.passed,
            "probe": probe.result}
