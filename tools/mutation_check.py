"""A small mutation check for one file: plant realistic single bugs, one at a time, and see whether its tests fail.

    python tools/mutation_check.py autograd_demo.py                        # every function, up to --max mutants
    python tools/mutation_check.py autograd_demo.py --function nth_derivative --max 30
    python tools/mutation_check.py lesson_harness.py --tests tests/test_lesson_harness.py

Each mutant changes one thing: an arithmetic or comparison operator (+ ↔ −, * ↔ /, < ↔ <=, ...), a
number (n → n + 1, x → 2x: off-by-one and missing-factor bugs), a boolean argument (keepdim=True →
False), or `dim=0` ↔ `dim=1`. The mutant is written into a scratch copy of the repository, never
into your checkout, and the file's tests run there (`-x`, first failure stops). A mutant the tests
do not kill is listed as a survivor: add the test that would have caught that bug, or explain why
the change is harmless (an "equivalent mutant"). Plot functions, `run` and `main` are skipped:
they only wire and draw. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import ast
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_FUNCTIONS = ("run", "main")  # wiring only; plot_* functions are skipped too
OPERATOR_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
                  ast.FloorDiv: ast.Div, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                  ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
TEST_TIMEOUT_S = 600  # a mutant that makes the tests hang counts as killed, after this long


@dataclass(frozen=True)
class Mutant:
    line: int
    function: str
    before: str
    after: str
    start: tuple[int, int]  # (line, column) of the replaced source segment
    end: tuple[int, int]


def _mutated_copies(node: ast.AST) -> list[ast.AST]:
    """Every single-change variant of one node (operators, numbers, boolean and dim arguments)."""
    variants: list[ast.AST] = []
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATOR_SWAPS:
        variants.append(ast.BinOp(node.left, OPERATOR_SWAPS[type(node.op)](), node.right))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in OPERATOR_SWAPS:
        variants.append(ast.Compare(node.left, [OPERATOR_SWAPS[type(node.ops[0])]()], node.comparators))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
        variants.append(ast.Constant(node.value + 1 if isinstance(node.value, int) else node.value * 2))
    elif isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
        if isinstance(node.value.value, bool):
            variants.append(ast.keyword(node.arg, ast.Constant(not node.value.value)))
        elif node.arg == "dim" and node.value.value in (0, 1, -1):
            variants.append(ast.keyword(node.arg, ast.Constant({0: 1, 1: 0, -1: 0}[node.value.value])))
    return variants


def find_mutants(source: str, functions: set[str] | None = None) -> list[Mutant]:
    tree = ast.parse(source)
    mutants = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        name = function.name
        if name in SKIPPED_FUNCTIONS or name.startswith("plot_") or (functions and name not in functions):
            continue
        body = function.body[1:] if ast.get_docstring(function) else function.body
        for statement in body:
            for node in ast.walk(statement):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.JoinedStr):
                    continue
                if getattr(node, "end_lineno", None) is None:
                    continue
                before = ast.get_source_segment(source, node)
                for variant in _mutated_copies(node):
                    mutants.append(Mutant(node.lineno, name, before, ast.unparse(variant),
                                          (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)))
    return mutants


def apply(source: str, mutant: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    (l0, c0), (l1, c1) = mutant.start, mutant.end
    head = "".join(lines[: l0 - 1]) + lines[l0 - 1][:c0]
    tail = lines[l1 - 1][c1:] + "".join(lines[l1:])
    replacement = mutant.after if l0 == l1 else f"({mutant.after})"
    return head + replacement + tail


def tests_pass(workdir: Path, tests: str) -> bool:
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", tests],
                              cwd=workdir, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a file at the repository root, e.g. autograd_demo.py")
    parser.add_argument("--tests", help="test file to run (default: tests/test_<file>)")
    parser.add_argument("--function", action="append", help="only mutate this function (repeatable)")
    parser.add_argument("--max", type=int, default=40, help="mutants to try, drawn at random (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="which mutants are drawn (default: 0)")
    args = parser.parse_args(argv)
    target = ROOT / args.file
    if not target.is_file():
        raise SystemExit(f"mutation_check: error: {args.file} is not a file at the repository root")
    tests = args.tests or f"tests/test_{target.stem}.py"
    source = target.read_text(encoding="utf-8")
    mutants = find_mutants(source, set(args.function) if args.function else None)
    random.Random(args.seed).shuffle(mutants)
    mutants = sorted(mutants[: args.max], key=lambda m: m.line)
    survivors = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch) / "repo"
        shutil.copytree(ROOT, workdir, ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "plots"))
        if not tests_pass(workdir, tests):
            raise SystemExit(f"mutation_check: error: {tests} fails before any mutation; fix that first")
        for i, mutant in enumerate(mutants, 1):
            (workdir / args.file).write_text(apply(source, mutant), encoding="utf-8")
            killed = not tests_pass(workdir, tests)
            print(f"[{i}/{len(mutants)}] {'killed  ' if killed else 'SURVIVED'} line {mutant.line} "
                  f"in {mutant.function}: {mutant.before!r} -> {mutant.after!r}", flush=True)
            if not killed:
                survivors.append(mutant)
        (workdir / args.file).write_text(source, encoding="utf-8")
    caught = len(mutants) - len(survivors)
    print(f"\n{caught} of {len(mutants)} mutants killed ({caught / max(len(mutants), 1):.0%}); "
          f"{len(survivors)} survived")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
