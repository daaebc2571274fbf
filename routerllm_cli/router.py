"""Routing policies: which model of a pool (ordered cheapest first) answers each HumanEval problem.

A router sees only what a deployed router would see: the prompt text and the entry point's name. Hidden
tests never reach it; `PromptTask.from_problem` reads only "task_id", "prompt" and "entry_point" from a
problem, and every policy takes `PromptTask`s. The one exception is `OracleRouter`, an upper bound that is
handed per-model hidden-test verdicts on purpose and says so in every decision.

Policies:
- `HeuristicRouter`: a prompt-only `difficulty` score cut by thresholds into a pool index.
- `CascadeRouter`: cheapest model first; its answer is kept when it passes the examples written in the
  prompt's own docstring (`extract_docstring_tests`), else the next model tries; the last model's answer is
  final. `CascadeRouter.run` drives it model by model, so each model generates only for unresolved problems.
- `RandomRouter`: the floor. `OracleRouter`: the ceiling.

Every decision is a `RoutingDecision` data object; `routing_breakdown` counts them per model.
"""

from __future__ import annotations

import ast
import bisect
import builtins
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from routerllm_cli.errors import ConfigError


class HasName(Protocol):
    name: str


@dataclass(frozen=True)
class PoolModel:
    """A pool member. Any object with `.name` (e.g. a config `ModelSpec`) works as well."""

    name: str
    cost: float | None = None  # relative cost (price, or parameters); only used to check the order


@dataclass(frozen=True)
class PromptTask:
    """What a router may see of a problem: no hidden tests, no canonical solution."""

    task_id: str
    prompt: str
    entry_point: str

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> PromptTask:
        # Only these three keys are read, so a router cannot peek at problem["test"].
        return cls(task_id=str(problem["task_id"]), prompt=problem["prompt"], entry_point=problem["entry_point"])


@dataclass(frozen=True)
class RoutingDecision:
    task_id: str
    model_name: str
    escalations: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "model_name": self.model_name, "escalations": self.escalations,
                "reason": self.reason}


def check_pool(pool: Sequence[HasName]) -> list[str]:
    """Names of the pool, after checking it is usable: non-empty, unique names, cheapest first when costs are known."""
    if not pool:
        raise ConfigError("the router's pool is empty", fix="list at least one model under models.router.pool")
    names = [m.name for m in pool]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"the router's pool names {', '.join(duplicates)} twice",
                          fix="give each pool model a unique name")
    costs = [getattr(m, "cost", None) for m in pool]
    if all(c is not None for c in costs) and costs != sorted(costs):
        raise ConfigError("the router's pool is not ordered cheapest first",
                          fix="reorder models.router.pool from cheapest to most expensive")
    return names


def routing_breakdown(decisions: Sequence[RoutingDecision], pool: Sequence[HasName] | None = None) -> dict[str, int]:
    """Problems per model, in pool order (models that got none included) when the pool is given."""
    counts: dict[str, int] = {m.name: 0 for m in pool} if pool is not None else {}
    for d in decisions:
        counts[d.model_name] = counts.get(d.model_name, 0) + 1
    return counts


# --- the prompt's own docstring -------------------------------------------------------------------------


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


_CHECK_HELPERS = '''
import math as _rl_math


def _rl_same(got, want):
    if got == want:
        return True
    numbers = (int, float)
    if isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool) \\
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
'''


def extract_docstring_tests(prompt: str, entry_point: str) -> str:
    """A test program for the examples in the entry point's docstring, or "" when it has none.

    Append it to `prompt + completion`. Expected values that are Python literals are compared with `==`
    (floats with a small tolerance, since docstrings show them rounded); other expected output is compared
    with the repr of the result, as doctest does. The program exits non-zero naming each failed example.
    """
    examples = docstring_examples(prompt, entry_point)
    if not examples:
        return ""
    parts = [f"\n\n# Examples from the docstring of {entry_point}.", _CHECK_HELPERS]
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


# --- difficulty ----------------------------------------------------------------------------------------

# Words that mark algorithmic content in HumanEval-style prompts.
_ALGO_WORDS = ("prime", "fibonacci", "fib", "sort", "sorted", "recursive", "recursion", "matrix", "grid",
               "palindrome", "factorial", "gcd", "divisor", "binary", "base", "roman", "collatz", "parenthes",
               "bracket", "nested", "subsequence", "permutation", "combination", "path", "polynomial",
               "modulo", "encode", "decode", "digits", "tribonacci")
# Phrases that suggest nested loops: looking at pairs, triples, sub-arrays, neighbours.
_NESTED_WORDS = ("pair", "triple", "two distinct", "three distinct", "every two", "subarray", "sub-array",
                 "all possible", "neighbor", "neighbour", "each row", "each column", "rows", "columns",
                 "consecutive", "substring", "rotation", "shift")

# Feature -> weight; the weights sum to 1 so the score stays in [0, 1].
DIFFICULTY_WEIGHTS = {
    "length": 0.25,
    "keywords": 0.25,
    "nested_loops": 0.15,
    "params": 0.10,
    "type_depth": 0.10,
    "examples": 0.10,
    "helpers": 0.05,
}


def _annotation_depth(node: ast.AST | None) -> int:
    if node is None:
        return 0
    if isinstance(node, ast.Subscript):
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return 1 + max((_annotation_depth(n) for n in inner), default=0)
    if isinstance(node, ast.BinOp):  # int | None
        return max(_annotation_depth(node.left), _annotation_depth(node.right))
    return 0


def difficulty_features(prompt: str, entry_point: str | None = None) -> dict[str, float]:
    """Each feature in [0, 1], read from the prompt alone.

    - length: words of the docstring's prose (example lines excluded), saturating at 150 words.
    - keywords: algorithmic words (prime, fibonacci, sort, recursive, matrix, palindrome, ...), 3 or more = 1.
    - nested_loops: phrases hinting at nested loops (pairs, triples, sub-arrays, rows/columns), 2 or more = 1.
    - params: parameters of the entry point beyond the first, 3 or more extra = 1.
    - type_depth: deepest type hint (List[int] = 1, List[List[int]] = 2), 2 or more = 1.
    - examples: docstring examples, 5 or more = 1 (more examples usually mean more edge cases).
    - helpers: other functions defined in the prompt (the task builds on them), 1 or more = 1.
    """
    func = _entry_function(prompt, entry_point)
    name = entry_point or (func.name if func else "")
    doc = entry_docstring(prompt, name or None)
    prose, in_output = [], False
    for ln in doc.splitlines():
        # Example calls and their doctest output are not prose; a mention of the name in a sentence is.
        if ln.strip().startswith(">>>"):
            in_output = True
        elif not ln.strip():
            in_output = False
        elif not in_output and not (name and f"{name}(" in ln.replace(" (", "(")):
            prose.append(ln)
    words = re.findall(r"[A-Za-z]+", " ".join(prose).lower())
    text = " ".join(words)
    algo_hits = sum(1 for w in _ALGO_WORDS if re.search(rf"\b{w}", text))
    nested_hits = sum(1 for w in _NESTED_WORDS if w in text)
    if func is not None:
        args = func.args.posonlyargs + func.args.args + func.args.kwonlyargs
        n_params = len(args)
        depth = max([_annotation_depth(a.annotation) for a in args] + [_annotation_depth(func.returns)])
    else:
        sig = re.search(rf"def {re.escape(name)}\s*\((.*?)\)", prompt, flags=re.S) if name else None
        n_params = len([p for p in sig.group(1).split(",") if p.strip()]) if sig else 0
        depth = sig.group(1).count("[") if sig else 0
    helpers = len(re.findall(r"^\s*def\s+\w+", prompt, flags=re.M)) - 1
    n_examples = len(docstring_examples(prompt, name)) if name else prompt.count(">>>")
    return {
        "length": min(1.0, len(words) / 100),
        "keywords": min(1.0, algo_hits / 2),
        "nested_loops": min(1.0, nested_hits / 1),
        "params": min(1.0, max(n_params - 1, 0) / 3),
        "type_depth": min(1.0, depth / 2),
        "examples": min(1.0, n_examples / 5),
        "helpers": min(1.0, max(helpers, 0)),
    }


def difficulty(problem: Mapping[str, Any] | PromptTask | str) -> float:
    """Difficulty in [0, 1] from the prompt alone: the weighted sum of `difficulty_features`."""
    if isinstance(problem, str):
        prompt, entry_point = problem, None
    elif isinstance(problem, PromptTask):
        prompt, entry_point = problem.prompt, problem.entry_point
    else:
        prompt = problem["prompt"]
        entry_point = problem["entry_point"] if "entry_point" in problem else None
    features = difficulty_features(prompt, entry_point)
    return round(sum(DIFFICULTY_WEIGHTS[k] * v for k, v in features.items()), 6)


def quantile_thresholds(scores: Sequence[float], pool_size: int) -> list[float]:
    """Thresholds that give each pool model an equal share of these difficulty scores."""
    if pool_size < 1 or not scores:
        raise ConfigError("quantile thresholds need a pool and at least one score")
    ordered = sorted(scores)
    return [ordered[min(len(ordered) - 1, (len(ordered) * k) // pool_size)] for k in range(1, pool_size)]


# --- policies ------------------------------------------------------------------------------------------


class HeuristicRouter:
    """Difficulty below thresholds[0] goes to pool[0], below thresholds[1] to pool[1], ... else the last model."""

    name = "heuristic"

    def __init__(self, thresholds: Sequence[float]):
        thresholds = [float(t) for t in thresholds]
        if any(not 0.0 <= t <= 1.0 for t in thresholds) or thresholds != sorted(thresholds):
            raise ConfigError(f"router thresholds {thresholds} are not increasing numbers between 0 and 1",
                              fix="set models.router.thresholds like [0.3, 0.6]")
        self.thresholds = thresholds

    def index(self, task: PromptTask) -> int:
        return bisect.bisect_right(self.thresholds, difficulty(task))

    def decide(self, task: PromptTask, pool: Sequence[HasName]) -> RoutingDecision:
        names = check_pool(pool)
        if len(self.thresholds) != len(names) - 1:
            raise ConfigError(f"{len(self.thresholds)} thresholds for a pool of {len(names)} models",
                              fix=f"give {len(names) - 1} thresholds (one fewer than pool models)")
        score = difficulty(task)
        k = bisect.bisect_right(self.thresholds, score)
        return RoutingDecision(task.task_id, names[k], 0, f"difficulty {score:.2f}, thresholds {self.thresholds}")


class RandomRouter:
    """The floor: a uniformly random pool model, reproducible per (seed, task_id) whatever the order."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def decide(self, task: PromptTask, pool: Sequence[HasName]) -> RoutingDecision:
        names = check_pool(pool)
        k = random.Random(f"{self.seed}:{task.task_id}").randrange(len(names))
        return RoutingDecision(task.task_id, names[k], 0, f"random (seed {self.seed})")


class OracleRouter:
    """An upper bound, not a router: per problem the cheapest model that passes the HIDDEN tests.

    `verdicts[task_id][model_name]` is whether that model's answer passed. Needs executed tests, so it
    refuses to exist when execution is off. When no model passes, the cheapest is chosen (nothing is lost).
    """

    name = "oracle"
    label = "oracle (upper bound: reads hidden-test verdicts)"

    def __init__(self, verdicts: Mapping[str, Mapping[str, bool]], *, execution: bool = True):
        if not execution:
            raise ConfigError("the oracle router needs hidden-test verdicts, and execution is off",
                              fix="turn execution on (drop --skip-execution) or pick another router policy")
        self.verdicts = verdicts

    def decide(self, task: PromptTask, pool: Sequence[HasName]) -> RoutingDecision:
        names = check_pool(pool)
        per_model = self.verdicts.get(task.task_id)
        missing = [n for n in names if per_model is None or n not in per_model]
        if missing:
            raise ConfigError(f"no hidden-test verdict for {task.task_id} from {', '.join(missing)}",
                              fix="run every pool model on every problem before using the oracle")
        for k, model in enumerate(names):
            if per_model[model]:
                return RoutingDecision(task.task_id, model, 0, f"{self.label}: cheapest model that passes")
        return RoutingDecision(task.task_id, names[0], 0, f"{self.label}: no model passes, cheapest chosen")


@dataclass(frozen=True)
class CascadeVerdict:
    accepted: bool
    reason: str
    examples: int


@dataclass
class CascadeOutcome:
    decision: RoutingDecision
    completion: str
    completions: dict[str, str] = field(default_factory=dict)  # every model that tried, in order


class CascadeRouter:
    """Cheapest model first; escalate when its answer fails the prompt's own docstring examples.

    Drive it step by step (`check`/`accept` per answer) or let `run` do the loop: model k generates only for
    the problems still unresolved, and the last model's answers are final without a check.
    A completion is checked as HumanEval runs it: `prompt + completion`, then the docstring examples.
    """

    name = "cascade"

    def check(self, prompt: str, entry_point: str, completion: str, sandbox: Any) -> CascadeVerdict:
        tests = extract_docstring_tests(prompt, entry_point)
        if not tests:
            return CascadeVerdict(True, "no docstring examples in the prompt; first answer accepted unchecked", 0)
        n = len(docstring_examples(prompt, entry_point))
        result = sandbox.run_program(prompt + completion + "\n" + tests)
        if result.passed:
            return CascadeVerdict(True, f"passed its {n} docstring examples", n)
        return CascadeVerdict(False, f"failed its docstring examples ({result.result})"[:300], n)

    def accept(self, prompt: str, entry_point: str, completion: str, sandbox: Any) -> bool:
        return self.check(prompt, entry_point, completion, sandbox).accepted

    def run(self, tasks: Sequence[PromptTask], pool: Sequence[HasName],
            generate: Callable[[HasName, list[PromptTask]], Sequence[str]], sandbox: Any) -> list[CascadeOutcome]:
        """Route every task; `generate(model, tasks)` returns one completion per task, in order."""
        names = check_pool(pool)
        tried: dict[str, dict[str, str]] = {t.task_id: {} for t in tasks}
        failures: dict[str, list[str]] = {t.task_id: [] for t in tasks}
        done: dict[str, CascadeOutcome] = {}
        pending = list(tasks)
        for k, model in enumerate(pool):
            if not pending:
                break
            completions = list(generate(model, pending))
            if len(completions) != len(pending):
                raise ValueError(f"generate returned {len(completions)} completions for {len(pending)} tasks")
            last = k == len(names) - 1
            verdicts = [None] * len(pending) if last else self._check_all(pending, completions, sandbox)
            still: list[PromptTask] = []
            for task, completion, verdict in zip(pending, completions, verdicts):
                tried[task.task_id][model.name] = completion
                if verdict is not None and not verdict.accepted:
                    failures[task.task_id].append(model.name)
                    still.append(task)
                    continue
                if last and k > 0:
                    reason = f"{', '.join(failures[task.task_id])} failed the docstring examples; last model, final"
                elif last:
                    reason = "only model in the pool; its answer is final"
                else:
                    reason = verdict.reason
                    if failures[task.task_id]:
                        reason = f"{', '.join(failures[task.task_id])} failed first; {model.name} {reason}"
                done[task.task_id] = CascadeOutcome(RoutingDecision(task.task_id, model.name, k, reason),
                                                    completion, dict(tried[task.task_id]))
            pending = still
        return [done[t.task_id] for t in tasks]

    def _check_all(self, tasks: Sequence[PromptTask], completions: Sequence[str],
                   sandbox: Any) -> list[CascadeVerdict]:
        # Each check is a separate sandboxed process, so the sandbox's worker count of them run at once.
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, int(getattr(sandbox, "workers", 1) or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="cascade-check") as pool:
            return list(pool.map(lambda tc: self.check(tc[0].prompt, tc[0].entry_point, tc[1], sandbox),
                                 zip(tasks, completions)))


def route_all(router: Any, tasks: Sequence[PromptTask], pool: Sequence[HasName]) -> list[RoutingDecision]:
    """One-shot policies (heuristic, random, oracle) over many tasks."""
    return [router.decide(t, pool) for t in tasks]
