"""How hard a HumanEval prompt looks, from the prompt alone: features in [0, 1] and their weighted sum."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

from routerllm_cli.errors import ConfigError
from routerllm_cli.router.docstring import _entry_function, docstring_examples, entry_docstring
from routerllm_cli.router.types import PromptTask

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
