"""``task:arithmetic``: multi-digit arithmetic word problems with one exact answer.

A problem is a short story with two numbers and one operation ("Mia has 47 stickers. Mia gets
38 more stickers. How many stickers does Mia have now?"): addition and subtraction of two-digit
numbers, and a two-digit number times a one-digit one. A response shows its calculation and
ends with the answer in a fixed format, ``Answer: 85``; the verifier reads the last such line
and gives 1 for the exact value, else 0. The train and eval problems never share a question.

Two variants add an environment (:mod:`rlhfkit.tasks.environment`) for multi-turn episodes:

- ``task:arithmetic-tool``: the same problems, and a **calculator** the model may call by
  writing ``<calc>47 + 38</calc>``; the environment writes ``<result>85</result>`` after it
  and the model goes on (``--environment calculator``). Half of the demonstrations use it.
- ``task:arithmetic-steps``: the same problems, with demonstrations that work the sum out one
  place value at a time (``47 + 38 = 47 + 30 + 8 = 77 + 8 = 85``): a reasoning path with
  steps, which the one-line ``47 + 38 = 85`` is not (see :func:`worked_steps`).
- ``task:arithmetic-clarify``: one number is left out of the problem ("Mia has some
  stickers..."); a **simulated user** gives it when the model asks a question, and scores the
  final answer (``--environment clarify``). Answering without asking can only guess.

Everything is generated from the lists below with a fixed seed: no files, no network.
"""

from __future__ import annotations

import ast
import operator
import random
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rlhfkit.data.records import Demonstration, Ranking
from rlhfkit.tasks.base import check_split
from rlhfkit.tasks.environment import Environment, Episode, Step
from rlhfkit.tasks.verifiable import VerifiableTask, prompt_key

__all__ = ["ArithmeticTask", "CalculatorEnvironment", "ClarifyArithmeticTask",
           "ClarifyEnvironment", "Problem", "StepsArithmeticTask", "ToolArithmeticTask",
           "calculate", "parse_answer", "worked_steps"]

NAMES = ("Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Omar", "Nina", "Raj",
         "Emma", "Finn", "Sara", "Tom", "Kai", "Ana", "Luca", "Maya")
ITEMS = ("apples", "stickers", "marbles", "books", "coins", "shells", "pencils", "cards",
         "eggs", "stamps", "beads", "cookies", "buttons", "candles", "rocks", "toy cars")
CONTAINERS = ("boxes", "bags", "jars", "packs", "crates", "baskets")
OPS = ("add", "sub", "mul")
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}

ANSWER_RE = re.compile(r"Answer:\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
"""The fixed answer format; the last match in a response is its answer."""


def parse_answer(text: str) -> str | None:
    """The number after the last ``Answer:`` in ``text``, without commas (None: no answer)."""
    found = ANSWER_RE.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".") or "0"
    return value


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression (numbers, + - * /, parentheses), safely.

    Raises:
        ValueError: anything else (names, calls, powers), or a division by zero.
    """
    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            try:
                return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
            except ZeroDivisionError:
                raise ValueError("division by zero") from None
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    cleaned = expression.replace("×", "*").replace("x", "*").replace(",", "").strip()
    if len(cleaned) > 64:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(cleaned, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return walk(tree)


def format_number(value: int | float) -> str:
    """``85`` for whole numbers, else up to four decimals."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Problem:
    """One word problem: its question, operands, operation and answer."""

    question: str
    a: int
    b: int
    op: str
    answer: int
    name: str
    item: str
    container: str = ""
    vague: str = ""
    """The question with one number left out (the clarify variant)."""
    detail: str = ""
    """The sentence that gives the missing number."""
    ask: str = ""
    """A question that asks for it."""

    @property
    def expression(self) -> str:
        """``47 + 38``."""
        return f"{self.a} {SYMBOL[self.op]} {self.b}"


def make_problem(rng: random.Random, digits: int, ops: tuple[str, ...]) -> Problem:
    """Draw one problem with ``digits``-digit operands (the multiplier has one digit)."""
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    op = rng.choice(ops)
    name, item, box = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CONTAINERS)
    if op in ("add", "sub"):  # the same sentence frame: "NAME has A ITEM" + what happens
        if op == "add":
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            rest = f". {name} gets {b} more {item}. How many {item} does {name} have now?"
        else:
            a = rng.randint(lo + 1, hi)
            b = rng.randint(lo, a - 1) if a - 1 >= lo else lo
            rest = f" and gives {b} of them away. How many {item} does {name} have left?"
        return Problem(f"{name} has {a} {item}{rest}", a, b, op, a + b if op == "add" else a - b,
                       name, item, "", f"{name} has some {item}{rest}",
                       f"{name} has {a} {item} at first.",
                       f"How many {item} does {name} have at first?")
    a, b = rng.randint(lo, hi), rng.randint(2, 9)
    q = f"{name} has {b} {box} with {a} {item} in each. How many {item} does {name} have " \
        "in all?"
    vague = f"{name} has some {box} with {a} {item} in each. How many {item} does {name} " \
            "have in all?"
    detail, ask = f"There are {b} {box}.", f"How many {box} are there?"
    return Problem(q, a, b, "mul", a * b, name, item, box, vague, detail, ask)


class ArithmeticTask(VerifiableTask):
    """Arithmetic word problems with an exact answer (see the module docstring).

    Args:
        n_train: Train problems (RL and self-improvement draw from them).
        n_eval: Held-out problems, none of whose questions is a train question.
        n_demos: Demonstrations of the answer format, on the first train problems (an SFT
            warm-up; the default model does not write the format on its own).
        digits: Digits of the operands.
        ops: Operations to draw from: add, sub, mul.
        seed: Seed of the problems and demonstrations.
    """

    name = "arithmetic"
    description = ("Arithmetic word problems (two-digit addition and subtraction, two-digit "
                   "times one-digit); the verifier checks the exact answer after 'Answer:'.")
    system_prompt = ("Solve the math word problem. Write the calculation, then the final "
                     "line 'Answer: <number>'.")

    def __init__(self, n_train: int = 2000, n_eval: int = 200, n_demos: int = 256,
                 digits: int = 2, ops: tuple[str, ...] = OPS, seed: int = 0) -> None:
        if not 1 <= digits <= 6:
            raise ValueError(f"{self.name}: digits must be in 1..6, got {digits}")
        unknown = set(ops) - set(OPS)
        if unknown or not ops:
            raise ValueError(f"{self.name}: ops must be some of {', '.join(OPS)}, got {ops}")
        if not 0 <= n_demos <= n_train:
            raise ValueError(f"{self.name}: n_demos must be in [0, n_train={n_train}]")
        self.n_train, self.n_eval, self.n_demos = n_train, n_eval, n_demos
        self.digits, self.ops, self.seed = digits, tuple(ops), seed

    # -- problems --------------------------------------------------------------------------

    @cached_property
    def _splits(self) -> dict[str, list[Problem]]:
        rng = random.Random(f"arithmetic-{self.digits}-{'-'.join(self.ops)}-{self.seed}")
        seen: set[str] = set()
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < self.n_train + self.n_eval:
            attempts += 1
            if attempts > 50 * (self.n_train + self.n_eval):
                raise ValueError(f"{self.name}: cannot draw {self.n_train + self.n_eval} "
                                 "distinct problems; lower n_train/n_eval or raise digits")
            p = make_problem(rng, self.digits, self.ops)
            if p.question in seen or p.vague in seen:
                continue
            seen.update((p.question, p.vague))
            problems.append(p)
        return {"train": problems[:self.n_train], "eval": problems[self.n_train:]}

    def problems(self, split: str = "train") -> list[Problem]:
        """The problems of a split ("train" or "eval")."""
        return list(self._splits[check_split(split)])

    def question_of(self, problem: Problem) -> str:
        """The prompt text of a problem."""
        return problem.question

    @cached_property
    def _by_prompt(self) -> dict[str, Problem]:
        return {self.question_of(p): p for ps in self._splits.values() for p in ps}

    def problem_of(self, prompt: Any) -> Problem | None:
        """The problem a prompt asks (None for a prompt that is not one of this task's)."""
        return self._by_prompt.get(prompt_key(prompt))

    def prompts(self, split: str = "train") -> list[str]:
        """The questions of a split."""
        return [self.question_of(p) for p in self.problems(split)]

    # -- the verifier ----------------------------------------------------------------------

    def reference_of(self, prompt: Any) -> int | None:
        """The exact answer."""
        problem = self.problem_of(prompt)
        return None if problem is None else problem.answer

    def verify(self, reference: Any, response: str) -> float:
        """1 if the last ``Answer:`` of the response is the reference, else 0."""
        answer = parse_answer(response)
        if answer is None:
            return 0.0
        try:
            return float(abs(float(answer) - float(reference)) < 1e-9)
        except ValueError:
            return 0.0

    def extract_answer(self, response: str) -> str | None:
        """The number after the last ``Answer:``."""
        return parse_answer(response)

    def answer_text(self, answer: str) -> str:
        """``Answer: 85``."""
        return f"Answer: {answer}"

    # -- demonstrations and rankings -------------------------------------------------------

    @staticmethod
    def solution(problem: Problem) -> str:
        """A worked answer in the task's format."""
        return f"{problem.expression} = {problem.answer}\nAnswer: {problem.answer}"

    def demonstrations(self) -> list[Demonstration]:
        """A worked answer for each of the first ``n_demos`` train problems."""
        return [Demonstration(prompt=self.question_of(p), response=self.solution(p),
                              id=f"{self.name}-demo-{i}", source="simulated",
                              annotator=f"{self.name}-templates")
                for i, p in enumerate(self.problems("train")[:self.n_demos])]

    def rankings(self) -> list[Ranking]:
        """Four answers per train problem after the demonstrations, ranked by the verifier.

        A right answer, a right answer without the format, and two wrong ones (off by a
        little; the wrong operation), so a reward model can learn both the format and the sums.
        """
        rng = random.Random(f"{self.name}-rankings-{self.seed}")
        problems = self.problems("train")[self.n_demos:self.n_demos + 256]
        prompts, groups = [], []
        for p in problems:
            off = p.answer + rng.choice([-1, 1]) * rng.randint(1, 10)
            wrong_op = p.a + p.b if p.op != "add" else p.a * 2 + p.b
            groups.append([self.solution(p), f"{p.expression} = {p.answer}",
                           f"{p.expression} = {off}\nAnswer: {off}",
                           f"{p.expression} = {wrong_op}\nAnswer: {wrong_op}"])
            prompts.append(self.question_of(p))
        return self.labeler(seed=self.seed, temperature=0.05).rank_batch(prompts, groups)


# ---------------------------------------------------------------------------------------
# The calculator (task:arithmetic-tool)
# ---------------------------------------------------------------------------------------

CALL_RE = re.compile(r"<calc>(.*?)</calc>\s*$", re.DOTALL)


class _ToolEpisode(Episode):
    def __init__(self, task: VerifiableTask, reference: Any, max_calls: int) -> None:
        self.task, self.reference, self.max_calls, self.calls = task, reference, max_calls, 0

    def step(self, text: str, ended: bool) -> Step:
        call = CALL_RE.search(text)
        if call is not None and ended and self.calls < self.max_calls:
            self.calls += 1
            try:
                result = format_number(calculate(call.group(1)))
            except ValueError:
                result = "error"
            return Step(f"<result>{result}</result>", role="tool", info={"tool_calls": 1})
        reward = 0.0 if self.reference is None else self.task.verify(self.reference, text)
        return Step(reward=reward, done=True)


class CalculatorEnvironment(Environment):
    """A calculator tool: ``<calc>EXPR</calc>`` is answered with ``<result>VALUE</result>``.

    The model's turn stops at ``</calc>``; the result is written after it, in the same
    assistant turn, and the model goes on. A turn without a call is the final answer, scored
    by the task's verifier (the reward of the episode, on that turn's last token).

    Args:
        task: The task whose references and verifier score the answers.
        max_calls: Calls allowed per episode; after that a turn is the final answer.
    """

    name = "calculator"
    stop = ("</calc>",)

    def __init__(self, task: VerifiableTask | None = None, max_calls: int = 3) -> None:
        self.task = task or ToolArithmeticTask()
        self.max_calls = max_calls

    def start(self, prompt: Any) -> Episode:
        """An episode on one problem."""
        return _ToolEpisode(self.task, self.task.reference_of(prompt), self.max_calls)


class ToolArithmeticTask(ArithmeticTask):
    """``task:arithmetic-tool``: the arithmetic problems with a calculator to call."""

    name = "arithmetic-tool"
    description = ("The arithmetic problems with a calculator tool: write <calc>EXPR</calc> "
                   "and read the <result> (--environment calculator).")
    system_prompt = ("Solve the math word problem. You may use a calculator: write "
                     "<calc>expression</calc> and its <result> follows. End with the line "
                     "'Answer: <number>'.")

    @staticmethod
    def tool_solution(problem: Problem) -> str:
        """A worked answer that calls the calculator."""
        return (f"<calc>{problem.expression}</calc><result>{problem.answer}</result>\n"
                f"Answer: {problem.answer}")

    def demonstrations(self) -> list[Demonstration]:
        """Worked answers; every other one calls the calculator."""
        demos = super().demonstrations()
        problems = self.problems("train")[:self.n_demos]
        for i, (demo, p) in enumerate(zip(demos, problems)):
            if i % 2 == 0:
                demo.response = self.tool_solution(p)
        return demos


# ---------------------------------------------------------------------------------------
# Worked steps (task:arithmetic-steps)


def _place_values(n: int) -> list[int]:
    """``308`` -> ``[300, 8]``: the nonzero place values of ``n``, largest first."""
    digits = str(n)
    return [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"] or [0]


def worked_steps(problem: Problem) -> str:
    """The calculation one place value at a time, each step a small sum.

    ``47 + 38 = 47 + 30 + 8 = 77 + 8 = 85``; ``83 - 38 = 83 - 30 - 8 = 53 - 8 = 45``;
    ``76 * 4 = 70 * 4 + 6 * 4 = 280 + 24 = 304``. Addition and subtraction take the second
    number apart and apply its parts one by one; a product takes the first number apart,
    multiplies each part and adds the partial products left to right.
    """
    a, b, sym = problem.a, problem.b, SYMBOL[problem.op]
    if problem.op in ("add", "sub"):
        parts = _place_values(b)
        chain = [f"{a} {sym} " + f" {sym} ".join(map(str, parts))]
        value = a
        for i, part in enumerate(parts[:-1]):
            value = value + part if problem.op == "add" else value - part
            chain.append(f"{value} {sym} " + f" {sym} ".join(map(str, parts[i + 1:])))
    else:
        parts = _place_values(a)
        products = [p * b for p in parts]
        chain = [" + ".join(f"{p} * {b}" for p in parts)]
        if len(parts) > 1:
            chain.append(" + ".join(map(str, products)))
            total = products[0]
            for i in range(1, len(products) - 1):
                total += products[i]
                chain.append(" + ".join(map(str, [total, *products[i + 1:]])))
    steps = [problem.expression, *chain, str(problem.answer)]
    steps = [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
    return " = ".join(steps)


class StepsArithmeticTask(ArithmeticTask):
    """``task:arithmetic-steps``: the arithmetic problems, demonstrated in worked steps."""

    name = "arithmetic-steps"
    description = ("The arithmetic problems, with demonstrations that work the calculation "
                   "out one place value at a time before 'Answer:'.")
    system_prompt = ("Solve the math word problem. Work the calculation out step by step, "
                     "one place value at a time, then write the final line "
                     "'Answer: <number>'.")

    @staticmethod
    def solution(problem: Problem) -> str:
        """The worked steps, then the answer line."""
        return f"{worked_steps(problem)}\nAnswer: {problem.answer}"


# ---------------------------------------------------------------------------------------
# The simulated user (task:arithmetic-clarify)
# ---------------------------------------------------------------------------------------


class _ClarifyEpisode(Episode):
    def __init__(self, task: VerifiableTask, problem: Problem | None) -> None:
        self.task, self.problem = task, problem

    def step(self, text: str, ended: bool) -> Step:
        if self.problem is None:
            return Step(done=True)
        if parse_answer(text) is not None or not ended or "?" not in text:
            return Step(reward=self.task.verify(self.problem.answer, text), done=True)
        return Step(self.problem.detail, role="user", info={"questions": 1})


class ClarifyEnvironment(Environment):
    """A simulated user who left a number out of the problem.

    A turn that asks a question (has a "?" and no ``Answer:``) is answered with the missing
    detail as the user's next message; a turn with an answer ends the episode, scored by the
    verifier. Guessing without asking is right only by chance.
    """

    name = "clarify"

    def __init__(self, task: ClarifyArithmeticTask | None = None) -> None:
        self.task = task or ClarifyArithmeticTask()

    def start(self, prompt: Any) -> Episode:
        """An episode on one problem."""
        return _ClarifyEpisode(self.task, self.task.problem_of(prompt))


class ClarifyArithmeticTask(ArithmeticTask):
    """``task:arithmetic-clarify``: problems with one number missing; ask the user for it."""

    name = "arithmetic-clarify"
    description = ("Arithmetic problems with one number left out; a simulated user gives it "
                   "when asked (--environment clarify).")
    system_prompt = ("Solve the math word problem. If a number is missing, ask the user for "
                     "it first. End with the line 'Answer: <number>'.")

    def question_of(self, problem: Problem) -> str:
        """The question with one number left out."""
        return problem.vague

    def demonstrations(self) -> list[Demonstration]:
        """Two records per problem: asking for the number, then the answer once given."""
        out = []
        for i, p in enumerate(self.problems("train")[:self.n_demos]):
            out.append(Demonstration(prompt=p.vague, response=p.ask, id=f"{self.name}-ask-{i}",
                                     source="simulated", annotator=f"{self.name}-templates"))
            out.append(Demonstration(
                messages=[{"role": "user", "content": p.vague},
                          {"role": "assistant", "content": p.ask},
                          {"role": "user", "content": p.detail},
                          {"role": "assistant", "content": self.solution(p)}],
                id=f"{self.name}-answer-{i}", source="simulated",
                annotator=f"{self.name}-templates"))
        return out


ToolArithmeticTask.environments = {"calculator": CalculatorEnvironment}
ClarifyArithmeticTask.environments = {"clarify": ClarifyEnvironment}
