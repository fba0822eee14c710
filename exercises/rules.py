"""An exercise's rules ("without torch.softmax", "with two reverse passes") checked however the code reaches them.

A ban names functions, not the spellings of their names: `torch.softmax`, `x.softmax(1)`,
`from torch.nn.functional import softmax as sm` and a helper that calls one of them inside `try/except` all
call the same function object, and that object is what is watched. Three watchers see every call:
- torch's own functions (torch.*, Tensor methods, torch.nn.functional, torch.linalg) through a
  `TorchFunctionMode`, which torch consults on every call of its API, whatever name the caller used;
- Python functions (torch.func, torch.optim, NumPy's and SciPy's helpers) and NumPy's C functions through
  `sys.setprofile`, which sees every function call and C call of this thread;
- torch's operators themselves (aten::_softmax, aten::linalg_inv_ex, ...) through a `TorchDispatchMode`, which
  sees what actually runs, however it was reached: `A.inverse()`, `matrix_power(A, -1)`, `torch.ops.aten...`.
A call is recorded, not refused, so catching the error it would raise changes nothing: the check reports
the broken rule when the exercise's test ends. The check's own reference computations run inside `reference()`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from exercises.catalog import Rule


def _resolve(dotted: str) -> object:
    """'torch.nn.functional.softmax' -> the object: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@dataclass
class Watch:
    """What the code under watch called: labels of banned calls, and the number of reverse passes."""
    torch_functions: dict[object, str] = field(default_factory=dict)  # function object -> its label
    python_codes: dict[object, str] = field(default_factory=dict)  # code object -> label
    c_functions: dict[int, tuple[object, str]] = field(default_factory=dict)  # id -> (object, label)
    files: dict[str, str] = field(default_factory=dict)  # source file -> label
    ops: dict[str, str] = field(default_factory=dict)  # "aten::_softmax" -> label
    rule_of: dict[str, Rule] = field(default_factory=dict)  # label -> the rule that bans it
    seen: list[str] = field(default_factory=list)  # labels of banned calls, first call first, no repeats
    reverse_passes: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # label -> calls, for the functions asked to be counted
    paused: int = 0  # > 0 inside `reference()`: the check's own computations

    def add(self, dotted: str, rule: Rule) -> None:
        obj = _resolve(dotted)
        label = dotted.replace("torch.nn.functional.", "F.").replace("numpy.", "np.")
        if isinstance(obj, type):  # a class: constructing it (its __init__) is the banned call
            label, obj = f"{label} (constructing one, or a subclass)", obj.__init__
        # The function's own code, not a decorator's wrapper (whose code every function it wraps shares).
        code = getattr(inspect.unwrap(obj), "__code__", None)
        if code is not None:
            self.python_codes[code] = label
        if not dotted.startswith("torch"):  # NumPy's C functions: torch's own go through the mode
            self.c_functions[id(obj)] = (obj, label)
        self.torch_functions[obj] = label
        self.rule_of[label] = rule

    def add_op(self, name: str, rule: Rule) -> None:
        label = f"torch's operator aten::{name} (however it was reached)"
        self.ops[f"aten::{name}"] = label
        self.rule_of[label] = rule

    def add_file(self, module: str, rule: Rule) -> None:
        label = f"{module} (any of its functions)"
        self.files[importlib.import_module(module).__file__] = label
        self.rule_of[label] = rule

    def record(self, label: str) -> None:
        if not self.paused and label not in self.seen:
            self.seen.append(label)


class _TorchCalls(TorchFunctionMode):
    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            label = self.watch.torch_functions.get(func)
        except TypeError:  # an unhashable callable cannot be a banned one
            label = None
        if label is not None:
            self.watch.record(label)
        return func(*args, **(kwargs or {}))


class _TorchOperators(TorchDispatchMode):
    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        label = self.watch.ops.get(func._schema.name)
        if label is not None:
            self.watch.record(label)
        return func(*args, **(kwargs or {}))


def _reverse_pass_codes() -> set:
    return {torch.autograd.grad.__code__, torch.autograd.backward.__code__}  # Tensor.backward calls the second


@contextlib.contextmanager
def watching(rules: tuple[Rule, ...] = (), count_reverse_passes: bool = False,
             count: tuple[str, ...] = ()) -> Iterator[Watch]:
    """Record, while active, every call of what `rules` ban, and count reverse passes (optionally) and the calls
    of the Python functions named in `count` (e.g. "torch.optim.Optimizer.zero_grad")."""
    watch = Watch()
    counted = {inspect.unwrap(_resolve(dotted)).__code__: dotted for dotted in count}
    watch.counts = dict.fromkeys(count, 0)
    for rule in rules:
        for dotted in rule.banned:
            watch.add(dotted, rule)
        for module in rule.banned_files:
            watch.add_file(module, rule)
        for name in rule.banned_ops:
            watch.add_op(name, rule)
    reverse_codes = _reverse_pass_codes() if count_reverse_passes else set()
    profiled = bool(watch.python_codes or watch.c_functions or watch.files or reverse_codes or counted)

    previous = sys.getprofile()

    def profile(frame, event, arg):
        if previous is not None:  # a watch inside another: the outer one keeps seeing every call
            previous(frame, event, arg)
        if watch.paused:
            return
        if event == "call":
            code = frame.f_code
            # A call re-entered from the torch-function mode (torch dispatches torch.autograd.grad to it, and it
            # calls the function again) is the same reverse pass.
            if code in reverse_codes and frame.f_back.f_code is not _TorchCalls.__torch_function__.__code__:
                watch.reverse_passes += 1
            if code in counted:
                watch.counts[counted[code]] += 1
            label = watch.python_codes.get(code) or watch.files.get(code.co_filename)
            if label:
                watch.record(label)
        elif event == "c_call":
            found = watch.c_functions.get(id(arg))
            if found is not None and found[0] is arg:
                watch.record(found[1])

    with contextlib.ExitStack() as stack:
        if watch.torch_functions:
            stack.enter_context(_TorchCalls(watch))
        if watch.ops:
            stack.enter_context(_TorchOperators(watch))
        if profiled:
            sys.setprofile(profile)
            stack.callback(sys.setprofile, previous)
        _ACTIVE.append(watch)
        stack.callback(_ACTIVE.pop)
        yield watch


_ACTIVE: list[Watch] = []  # the watches now active, innermost last


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """The check's own computations (the reference answer): not the learner's calls, so not watched."""
    for watch in _ACTIVE:
        watch.paused += 1
    try:
        yield
    finally:
        for watch in _ACTIVE:
            watch.paused -= 1
