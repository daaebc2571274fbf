"""The examples a HumanEval prompt writes in its own docstring, and a program that checks a completion against them.

The cascade router keeps a cheap model's answer when it passes these examples. They come from the prompt alone
(doctest `>>>` lines and the inline shapes HumanEval uses), never from the hidden tests.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
from dataclasses import dataclass
from pathlib import Path


def _entry_function(prompt: str, entry_point: str | None) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return None
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if entry_point is not None:
        funcs = [f for f in funcs if f.name == entry_point]
    return funcs[-1] if funcs else None


def entry_docstring(prompt: str, entry_point: str | None = None) -> str:
    """The entry point's own docstring (not those of helper functions shown earlier in the prompt)."""
    func = _entry_function(prompt, entry_point)
    if func is not None:
        return ast.get_docstring(func, clean=True) or ""
    # Unparseable prompt: take the last triple-quoted block after the def line.
    start = prompt.rfind(f"def {entry_point}(") if entry_point else prompt.rfind("def ")
    blocks = re.findall(r'("""|\'\'\')(.*?)\1', prompt[max(start, 0):], flags=re.S)
    return blocks[-1][1] if blocks else ""


@dataclass(frozen=True)
class DocExample:
    """One example from a docstring: `call` evaluates to `expected` (a literal, or doctest output text)."""

    call: str
    expected: str
    line: int


# Separators seen in HumanEval docstrings between a call and its result, longest first.
_INLINE_SEP = re.compile(r"^(?:#\s*)?(==>|=>|➞|->|==|=|returns|should return)\s*(.*)$")
_EXAMPLES_HEADER = re.compile(r"^\s*(?:for\s+)?examples?\b", re.I)
_BULLET_CALL = re.compile(r"^(?:[*-]\s*|for\s+)?\w+\s*\(")


def _call_span(text: str, start: int) -> int | None:
    """End index of the balanced call starting at text[start] (the name), skipping string literals."""
    i = text.find("(", start)
    depth, quote = 0, None
    while 0 <= i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _parse_literal(text: str) -> str | None:
    """`text` as a Python literal source, or None. Accepts docstring spellings like `true` and a trailing '.'."""
    text = text.strip()
    # A sentence's full stop first: "should return 16." means 16.
    candidates = [text.rstrip(".").strip(), text]
    if "#" in text:
        candidates.append(text[: text.index("#")].strip())
    for cand in candidates:
        if cand.lower() in ("true", "false", "none"):
            return cand.capitalize()
        try:
            ast.literal_eval(cand)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if cand:
            # Normalised, so a trailing comment cannot swallow the rest of a generated line.
            return ast.unparse(ast.parse(cand, mode="eval"))
    return None


def _runnable_call(expr: str, entry_point: str, known_names: set[str]) -> bool:
    """True when `expr` is a call that involves the entry point and names nothing undefined (no `is_happy(a)`)."""
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(node, ast.Call):
        return False
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    calls_entry = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == entry_point
                      for n in ast.walk(node))
    return calls_entry and names <= known_names


def docstring_examples(prompt: str, entry_point: str) -> list[DocExample]:
    """Examples written in the entry point's docstring.

    Two shapes are read: doctest (`>>> call` then the expected output lines, or `>>> call == value`) and the
    inline shapes HumanEval uses after an "Example(s)" header (`f(x) ==> 3`, `f(x) ➞ True`, `f(x) returns 'a'`,
    `f(x) = [1]`). Examples whose call names an undefined variable or whose result is not a literal
    (`-> 19 - 5 - 6 = 8`) are skipped rather than guessed.
    """
    doc = entry_docstring(prompt, entry_point)
    known = set(dir(builtins)) | {entry_point}
    func_defs = re.findall(r"^\s*(?:def|class)\s+(\w+)", prompt, flags=re.M)
    imports = re.findall(r"^\s*(?:import|from)\s+(\w+)", prompt, flags=re.M)
    known |= set(func_defs) | set(imports)

    lines = doc.splitlines()
    # `f(x) = y` reads as an example only after the last "Example(s):" header; before it, the docstring may
    # be defining a recurrence (`tri(n) = 1 + n / 2`) rather than showing a result.
    headers = [n for n, ln in enumerate(lines) if _EXAMPLES_HEADER.match(ln)]
    last_header = headers[-1] if headers else len(lines)
    examples: list[DocExample] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith(">>>"):
            call = stripped[3:].strip()
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("..."):
                call += "\n" + lines[j].strip()[3:].strip()
                j += 1
            out: list[str] = []
            while j < len(lines) and lines[j].strip() and not lines[j].strip().startswith(">>>"):
                out.append(lines[j].strip())
                j += 1
            example = _doctest_example(call, " ".join(out), entry_point, known, i + 1)
            if example:
                examples.append(example)
            i = j
            continue
        if i > last_header or _BULLET_CALL.match(stripped):
            example = _inline_example(stripped, entry_point, known, i + 1, loose=i > last_header)
            if example:
                examples.append(example)
        i += 1
    return examples


def _doctest_example(call: str, output: str, entry_point: str, known: set[str], line: int) -> DocExample | None:
    try:
        node = ast.parse(call, mode="eval").body  # a trailing `# comment` parses fine
    except SyntaxError:
        return None
    # `>>> f(x) == value` with no output line: the docstring states the value inline.
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq) and not output:
        left, right = ast.unparse(node.left), ast.unparse(node.comparators[0])
        if _runnable_call(left, entry_point, known) and _parse_literal(right) is not None:
            return DocExample(call=left, expected=right, line=line)
        return None
    call = ast.unparse(node)
    if not _runnable_call(call, entry_point, known):
        return None
    # Doctest prints nothing for None, so an empty output block means None.
    return DocExample(call=call, expected=output if output else "None", line=line)


def _inline_example(line_text: str, entry_point: str, known: set[str], line: int, *,
                    loose: bool) -> DocExample | None:
    """`loose`: after the examples header, where the call may sit mid-line and `=` counts as a separator."""
    if loose:
        match = re.search(rf"(?<![\w.]){re.escape(entry_point)}\s*\(", line_text)
    else:
        match = re.match(rf"(?:[*-]\s*|for\s+)?({re.escape(entry_point)})\s*\(", line_text)
    if not match:
        return None
    start = match.start() if loose else match.start(1)
    end = _call_span(line_text, start)
    if end is None:
        return None
    call = line_text[start:end]
    sep = _INLINE_SEP.match(line_text[end:].strip())
    if not sep or (sep.group(1) == "=" and not loose) or not _runnable_call(call, entry_point, known):
        return None
    expected = _parse_literal(sep.group(2))
    if expected is None:
        return None
    return DocExample(call=call, expected=expected, line=line)


@functools.lru_cache(maxsize=1)
def _check_helpers() -> str:
    """The source of check_program.py without its docstring: the helpers every generated program starts with."""
    text = (Path(__file__).parent / "check_program.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    first = tree.body[1].lineno if isinstance(tree.body[0], ast.Expr) else 1  # the line after the docstring
    return "\n" + "\n".join(text.splitlines()[first - 1:]) + "\n"


def extract_docstring_tests(prompt: str, entry_point: str) -> str:
    """A test program for the examples in the entry point's docstring, or "" when it has none.

    Run it as the tests of `prompt + completion` (`Sandbox.run_tests`; appended to the program it also runs).
    Expected values that are Python literals are compared with `==`
    (floats with a small tolerance, since docstrings show them rounded); other expected output is compared
    with the repr of the result, as doctest does. The program exits non-zero naming each failed example.
    """
    examples = docstring_examples(prompt, entry_point)
    if not examples:
        return ""
    parts = [f"\n\n# Examples from the docstring of {entry_point}.", _check_helpers()]
    for ex in examples:
        literal = _parse_literal(ex.expected)
        want = literal if literal is not None else "_rl_NOT_LITERAL"
        parts.append(f"_rl_check({ex.line}, {ex.call!r}, lambda: ({ex.call}), {want}, {ex.expected!r})")
    parts.append(
        "\nif _rl_failures:\n"
        "    raise SystemExit(f'{len(_rl_failures)} of "
        f"{len(examples)}"
        " docstring examples failed: ' + '; '.join(_rl_failures))\n"
        f"print('{len(examples)} docstring examples passed')\n"
    )
    return "\n".join(parts)
