"""Helpers of the docstring-example check program, executed inside the sandbox, never imported by routerllm.

`docstring.extract_docstring_tests` copies this file's text into the program it generates, after the prompt and
the model's completion, so every name here is prefixed `_rl_` to stay out of the way of the code under test. It
is a file of its own so that it is real Python a reader and a linter can check, not a string.
"""

import math as _rl_math


def _rl_same(got, want):
    if got == want:
        return True
    numbers = (int, float)
    if isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool) \
            and not isinstance(want, bool):
        # Docstrings print rounded floats; a correct answer may differ in the last bits.
        return _rl_math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(got, (list, tuple)) and type(got) is type(want) and len(got) == len(want):
        return all(_rl_same(g, w) for g, w in zip(got, want))
    return False


_rl_failures = []


def _rl_check(line, call, thunk, want_literal, want_text):
    try:
        got = thunk()
    except Exception as exc:
        _rl_failures.append(f"docstring line {line}: {call} raised {type(exc).__name__}: {exc}"[:300])
        return
    ok = _rl_same(got, want_literal) if want_literal is not _rl_NOT_LITERAL else repr(got) == want_text
    if not ok:
        _rl_failures.append(f"docstring line {line}: {call} returned {got!r}, docstring says {want_text}"[:300])


_rl_NOT_LITERAL = object()
