"""What every sandboxed process runs first, before a line of untrusted code (`python -I -S -c <text>`).

The harness sends codec.py, isolation.py and this file as one text (routerllm's own files are not visible
inside); standard library only. It reads one JSON header line from stdin, puts the process in its layer (for the
built-in layer: namespaces and a private root; bubblewrap has made both already), applies rlimits, drops every
capability, installs the seccomp filter, and then plays one of three roles:

- "subject": runs the prompt and the completion as a module and answers calls to its entry point over a pipe,
  one frame per call. Nothing else: it never sees the tests and holds no way to report a verdict.
- "checker": runs the problem's prompt (for its imports and helpers) and its tests, with the entry point bound
  to a stub that calls the subject and decodes what comes back into plain built-in values. Only this process
  holds the pipe the harness reads the verdict from, and the per-run nonce a verdict line must carry.
- "program": runs one program, which passes if it returns (`Sandbox.run_program`). The program shares this
  process with its verdict pipe, so that verdict is only as honest as the program.
"""

import json
import os
import signal
import sys

try:  # imported as part of the package (tests); inside the sandbox the two files precede this text
    from routerllm_cli.sandbox.codec import decode, describe, encode, failed, recv, send
    from routerllm_cli.sandbox.isolation import builtin_layer, guard, limits, lock_down
except ImportError:
    pass

# ---------------------------------------------------------------------------------------------------- roles


class Timeout(BaseException):
    pass


class SubjectEnded(BaseException):
    pass


def _alarm(*_):
    raise Timeout()


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _serve(hdr):
    """The subject: run the module, then answer calls to the entry point until the pipe closes."""
    req, rep, entry = hdr["fds"]["req"], hdr["fds"]["rep"], hdr["entry_point"]
    ns = {}
    try:
        exec(compile(hdr["source"], "<program>", "exec"), ns)
        status = ["ready"] if entry in ns else ["raise", "NameError", f"name '{entry}' is not defined"]
    except BaseException as exc:
        status = ["raise", *describe(exc)]
    _flush()
    send(rep, status)
    while status[0] == "ready":
        message = recv(req, hdr["max_value"])
        if message is None:
            break
        try:
            args, kwargs = decode(message[1]), decode(message[2])
            reply = ["ok", encode(ns[entry](*args, **kwargs), [hdr["max_value"] // 8])]
        except BaseException as exc:
            reply = ["raise", *describe(exc)]
        _flush()
        data = json.dumps(reply)
        if len(data) > hdr["max_value"]:
            reply = ["ok", ["o", f"value over {hdr['max_value']} bytes", True]]
        send(rep, reply)


def _rebuild(name, msg):
    """An exception raised in the subject, raised again here (built-in class when it names one); its verdict
    keeps the subject's own text."""
    import builtins

    cls = getattr(builtins, name, None)
    exc = None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            exc = cls(msg) if msg else cls()
        except Exception:
            pass
    if exc is None:
        exc = type(name, (Exception,), {})(msg)
    exc.relayed = (name, msg)
    return exc


def _check(hdr, report):
    """The checker: the problem's tests, with the entry point answered by the subject."""
    req, rep, entry, cap = hdr["fds"]["req"], hdr["fds"]["rep"], hdr["entry_point"], hdr["max_value"]

    def answer():
        message = recv(rep, cap)
        if message is None:
            raise SubjectEnded()
        if type(message) is not list or not message or message[0] not in ("ready", "ok", "raise"):
            raise ValueError("the program answered something that is not a result")
        if message[0] == "raise":
            raise _rebuild(str(message[1])[:100], str(message[2])[:200])
        return decode(message[1]) if message[0] == "ok" else None

    def candidate(*args, **kwargs):
        send(req, ["call", encode(list(args)), encode(dict(kwargs))])
        return answer()

    candidate.__name__ = candidate.__qualname__ = entry
    ns = {}
    signal.signal(signal.SIGALRM, _alarm)
    report("started")
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, hdr["timeout"])
            exec(compile(hdr["prompt"], "<prompt>", "exec"), ns)
            answer()  # the module ran (or its error is raised here)
            ns[entry] = candidate
            exec(compile(hdr["tests"], "<tests>", "exec"), ns)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        verdict = "passed"
    except Timeout:
        verdict = "timed out"
    except SubjectEnded:
        verdict = "subject ended"
    except BaseException as exc:
        verdict = failed(*getattr(exc, "relayed", None) or describe(exc))
    _flush()
    report("verdict " + verdict)


def _program(hdr, report):
    signal.signal(signal.SIGALRM, _alarm)
    report("started")
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, hdr["timeout"])
            exec(compile(hdr["source"], "<program>", "exec"), {"__name__": "__main__"} if hdr["main"] else {})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        verdict = "passed"
    except Timeout:
        verdict = "timed out"
    except BaseException as exc:
        verdict = failed(*describe(exc))
    _flush()
    report("verdict " + verdict)


def _setup(hdr):
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if hdr["layer"] == "builtin":
        iso = builtin_layer(hdr)
    else:  # bubblewrap made every namespace and the private root; it fails rather than run without them
        iso = {"net": "namespace", "pid": "namespace", "ipc": "namespace", "fs": "private-root"}
    limits(hdr)
    iso["proc"] = "seccomp" if lock_down(hdr) else "rlimit"
    iso["layer"] = hdr["layer"]
    guard(iso["net"] == "namespace")
    return iso


def _reporting(hdr, iso):
    write, channel, nonce = os.write, hdr["fds"].pop("verdict"), hdr.pop("nonce")

    def report(text):
        write(channel, f"{nonce} {text}\n".encode())

    report("isolation " + " ".join(f"{k}={v.replace(' ', '_')}" for k, v in iso.items()))
    (_check if hdr["role"] == "checker" else _program)(hdr, report)


def main():
    hdr = json.loads(sys.stdin.buffer.readline())
    iso = _setup(hdr)
    if hdr["role"] == "subject":  # holds no verdict pipe and no nonce: there is nothing here to forge with
        _serve(hdr)
    else:
        _reporting(hdr, iso)
    os._exit(0)


if __name__ == "__main__":
    main()
