"""Running untrusted model-generated code: HumanEval pass@1 and the router's docstring checks.

(The full statement of what is and is not defended is written below, once the tests pin it down.)
"""

from routerllm_cli.sandbox.harness import Sandbox
from routerllm_cli.sandbox.limits import ExecutionResult, SandboxLimits

__all__ = ["ExecutionResult", "Sandbox", "SandboxLimits"]
