"""Comparisons that fail with a message a learner can act on: what was expected, what came, where they differ,
what the difference looks like, and a hint (HINT=2 adds the recipe).

Every message ends with hints from exercises/catalog.py for the exercise under check (conftest.py sets it), so
an edited docstring changes nothing here.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from exercises import catalog
from exercises.rules import reference

SMALL_2D = (8, 12)  # a 2-D result up to this many rows and columns is shown whole
NEIGHBOURS = 3  # values shown on each side of the worst mismatch, along the last dimension
LABEL_WIDTH = 12  # "  expected: " and "  got:      " line up on this column
RATIO_TOLERANCE = 1e-3  # relative spread under which got / expected counts as one constant ratio
_current: list[catalog.Exercise] = []  # the exercise under check (conftest.py pushes and pops it)


@contextlib.contextmanager
def checking(exercise: catalog.Exercise | None) -> Iterator[None]:
    """Make `exercise`'s hints the ones every failure message ends with."""
    _current.append(exercise)
    try:
        yield
    finally:
        _current.pop()


def hint_lines(hint: str) -> list[str]:
    """The check's own hint, then the exercise's idea, then the recipe (HINT=2) or how to ask for it."""
    exercise = _current[-1] if _current else None
    lines = ["Hint: " + " ".join(textwrap.dedent(hint).split())] if hint else []
    if exercise is None:
        return lines or ["Hint: read the docstring of the exercise again."]
    lines.append(f"Idea: {exercise.idea}")
    if catalog.hint_level() >= 2:
        lines.append(f"Recipe: {exercise.recipe}")
    else:
        lines.append(f"Stuck? HINT=2 adds the recipe: HINT=2 make exercises, or HINT=2 python -m pytest exercises "
                     f"-k {exercise.name}")
    if not hint:
        lines[0] = "Hint: " + lines[0].removeprefix("Idea: ")
    return lines


def _array(value: torch.Tensor) -> np.ndarray:
    array = value.detach().cpu()
    if array.dtype in (torch.bfloat16, torch.float16):
        array = array.float()
    return array.numpy()


def _whole(value: torch.Tensor) -> bool:
    """Small enough to show every value: a short vector or a small matrix."""
    return value.ndim <= 1 and value.numel() <= SMALL_2D[1] or (
        value.ndim == 2 and value.shape[0] <= SMALL_2D[0] and value.shape[1] <= SMALL_2D[1])


def _show(value: object) -> str:
    """A short, readable rendering of a tensor, array or plain Python value."""
    if torch.is_tensor(value):
        described = f"(shape {tuple(value.shape)}, {value.dtype})"
        if _whole(value):
            text = np.array2string(_array(value), precision=4, separator=", ", max_line_width=110,
                                   suppress_small=True)  # fixed-point for expected and got alike
            return f"{text}  {described}"
        return described  # large: the table around the worst mismatch shows the values that matter
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=4, threshold=24, separator=", ", max_line_width=100)
    return repr(value)


def _labelled(label: str, value: object) -> str:
    head = f"  {label}:".ljust(LABEL_WIDTH)
    lines = _show(value).splitlines() or [""]
    return "\n".join([head + lines[0], *(" " * LABEL_WIDTH + line for line in lines[1:])])


def fail(what: str, *, expected: object, got: object, hint: str, show_values: bool = True,
         details: list[str] | None = None) -> None:
    """Stop the check with 'what', the expected and actual values, details, and the hints; no traceback."""
    lines = [what]
    if show_values:
        lines += [_labelled("expected", expected), _labelled("got", got)]
    lines += details or []
    lines += hint_lines(hint)
    # `from None`: when called while handling the learner's exception, show only this message.
    raise pytest.fail.Exception("\n".join(lines), pytrace=False) from None


def check(condition: bool, what: str, *, expected: object, got: object, hint: str,
          looks_like: dict[str, object] | None = None) -> None:
    """Fail with the message unless `condition` holds; `looks_like` maps a known mistake to what it gives."""
    if not condition:
        fail(what, expected=expected, got=got, hint=hint,
             details=[f"Looks like: {text}." for text, value in (looks_like or {}).items() if value == got])


def check_equal(got: object, expected: object, *, what: str, hint: str,
                looks_like: dict[str, object] | None = None) -> None:
    """Exact equality of plain Python values (ints, tuples, lists, strings); `looks_like` as in check_close."""
    if type(got) is not type(expected) and not (isinstance(got, int) and isinstance(expected, int)):
        fail(f"{what}: wrong type.", expected=f"a {type(expected).__name__}, e.g. {expected!r}",
             got=f"a {type(got).__name__}: {got!r}", hint=hint)
    if got != expected:
        matches = [f"Looks like: {text}." for text, value in (looks_like or {}).items() if value == got]
        if not matches and isinstance(got, int | float) and isinstance(expected, int | float) and expected:
            matches = [f"Looks like: yours is {got - expected:+g} ({got / expected:.3g}× the expected value)."]
        fail(f"{what}: wrong value.", expected=expected, got=got, hint=hint, details=matches)


def _index_text(index: tuple[int, ...]) -> str:
    return f"[{', '.join(map(str, index))}]"


def _neighbourhood(got: torch.Tensor, expected: torch.Tensor, wrong: torch.Tensor, index: tuple[int, ...]) -> list[str]:
    """Expected and got side by side around `index`, along the last dimension, mismatches marked."""
    if not index:
        return []
    last = expected.shape[-1]
    start, stop = max(0, index[-1] - NEIGHBOURS), min(last, index[-1] + NEIGHBOURS + 1)
    rows = [("index", "expected", "got", "")]
    for j in range(start, stop):
        at = (*index[:-1], j)
        rows.append((_index_text(at), f"{expected[at].item():.6g}", f"{got[at].item():.6g}",
                     "✗" if bool(wrong[at]) else ""))
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    lines = [f"  Around the largest difference, along the last dimension ({start} … {stop - 1} of {last}):"]
    lines += ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, [*widths, 1])).rstrip()
              for row in rows]
    return lines


def _distinct(a: complex, b: complex) -> tuple[str, str]:
    """a and b printed with the fewest significant digits (at least 6) that tell them apart."""
    for digits in range(6, 18):
        left, right = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if left != right:
            break
    return left, right


def _constant(values: torch.Tensor) -> float | None:
    """The one value all entries share (within RATIO_TOLERANCE), else None."""
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None
    centre = values.median().item()
    spread = (values - centre).abs().max().item()
    return centre if spread <= RATIO_TOLERANCE * max(abs(centre), 1e-12) else None


def _looks_like(got: torch.Tensor, expected: torch.Tensor, scales: dict[float, str]) -> list[str]:
    """What the difference looks like: a common ratio or offset, NaN/inf, a transpose, a shift, zeros first."""
    found = []
    finite_expected = torch.isfinite(expected)
    bad = ~torch.isfinite(got) & finite_expected
    if bool(bad.any()):
        kind = "NaN" if bool(got[bad].isnan().any()) else "inf"
        where = bad.nonzero().tolist()
        rows = sorted({tuple(i[:-1]) for i in where}) if got.ndim >= 2 else []
        place = (f" in {len(rows)} row(s), e.g. row {_index_text(rows[0])}" if rows else
                 f" at {len(where)} position(s), e.g. {_index_text(tuple(where[0]))}" if got.ndim else "")
        found.append(f"yours holds {kind}{place}, where the expected values are finite: an overflow (exp of a "
                     "large number), 0/0, or a row with nothing left to normalise")
        return found
    nonzero = expected.abs() > 1e-12
    if bool(nonzero.any()) and bool(((got == 0) == (expected == 0)).all()):
        ratio = _constant(got[nonzero] / expected[nonzero])
        if ratio is not None and abs(ratio - 1) > RATIO_TOLERANCE:
            meaning = next((text for scale, text in scales.items() if math.isclose(ratio, scale, rel_tol=1e-3)), "")
            sign = "the sign is flipped everywhere" if math.isclose(ratio, -1, rel_tol=1e-3) else (
                f"yours is {ratio:.4g}× the expected value everywhere")
            found.append(sign + (f" — {meaning}" if meaning else ""))
    offset = _constant((got - expected).reshape(-1))
    if offset is not None and abs(offset) > 1e-9 and not found:
        found.append(f"yours is the expected value {offset:+.4g} everywhere (a constant offset)")
    if got.ndim == 2 and got.shape == expected.shape[::-1] and got.shape[0] != got.shape[1]:
        return found  # a shape mismatch: handled by the caller
    if expected.ndim >= 2 and got.shape == expected.shape and expected.shape[-1] == expected.shape[-2] and \
            torch.allclose(got, expected.mT, rtol=1e-6, atol=1e-9):
        found.append("yours is the transpose of the expected matrix (rows and columns swapped)")
    if expected.ndim >= 1 and expected.shape[-1] > 1:
        if torch.allclose(got, expected.flip(-1), rtol=1e-6, atol=1e-9):
            found.append("yours is the expected result in reverse order along the last dimension")
        elif torch.allclose(got[..., 1:], expected[..., :-1], rtol=1e-6, atol=1e-9):
            found.append("yours is the expected result shifted one place later along the last dimension "
                         "(off by one?)")
        elif torch.allclose(got[..., :-1], expected[..., 1:], rtol=1e-6, atol=1e-9):
            found.append("yours is the expected result shifted one place earlier along the last dimension "
                         "(off by one?)")
    if expected.ndim == 2 and bool((expected == 0).any()):
        zeros_first = [i for i in range(len(expected)) if not torch.equal(got[i], expected[i])
                       and bool(expected[i, -1] == 0) and bool(got[i, 0] == 0)
                       and torch.equal(got[i][got[i] != 0], expected[i][expected[i] != 0])]
        if zeros_first:
            found.append(f"in rows {zeros_first} the zeros come first and the values after them: padding on the "
                         "left instead of the right")
    if expected.ndim >= 1 and len(expected) > 1 and got.shape == expected.shape and not found:
        rows_got = sorted(map(tuple, got.reshape(len(got), -1).tolist()))
        rows_expected = sorted(map(tuple, expected.reshape(len(expected), -1).tolist()))
        if rows_got == rows_expected:
            found.append("yours has the expected entries along the first dimension, in a different order")
    return found


def check_close(got: object, expected: torch.Tensor, *, what: str, hint: str, rtol: float, atol: float,
                check_dtype: bool = True, looks_like: dict[str, torch.Tensor] | None = None,
                scales: dict[float, str] | None = None) -> None:
    """Compare a tensor with the reference: type, shape, dtype, then values within rtol/atol.

    Values pass when |got − expected| ≤ atol + rtol·|expected| everywhere (torch.isclose), NaN matching NaN and
    inf matching inf of the same sign. On a mismatch the message shows the worst entry with its neighbours, and
    what the difference looks like: `looks_like` maps a description of a known mistake to the result that mistake
    gives (the check computes them); `scales` maps a ratio got/expected to what it means (e.g. {3: "n_chunks"}).
    """
    if not torch.is_tensor(got):
        fail(f"{what}: expected a torch.Tensor.", expected=f"a tensor of shape {tuple(expected.shape)}",
             got=f"a {type(got).__name__}: {got!r}"[:200],
             hint="Return a tensor (torch.as_tensor converts a list or an array). " + hint)
    with reference():  # the comparison is the check's work, not the learner's
        _compare(got, expected, what=what, hint=hint, rtol=rtol, atol=atol, check_dtype=check_dtype,
                 looks_like=looks_like or {}, scales=scales or {})


def _compare(got: torch.Tensor, expected: torch.Tensor, *, what: str, hint: str, rtol: float, atol: float,
             check_dtype: bool, looks_like: dict[str, torch.Tensor], scales: dict[float, str]) -> None:
    known = [f"Looks like: {text}." for text, value in looks_like.items()
             if torch.is_tensor(value) and value.shape == got.shape and
             torch.allclose(got.detach().cpu().double(), value.detach().cpu().double(), rtol=max(rtol, 1e-6),
                            atol=max(atol, 1e-9), equal_nan=True)]
    if got.shape != expected.shape:
        details = known[:]
        differs = [d for d in range(max(got.ndim, expected.ndim)) if got.ndim == expected.ndim and
                   got.shape[d] != expected.shape[d]]
        if not details and len(differs) == 1:
            d = differs[0]
            extra = got.shape[d] - expected.shape[d]
            count = f"{abs(extra)} {'more' if extra > 0 else 'fewer'}"
            details.append(f"Looks like: {count} along dimension {d} than expected"
                           + (" (off by one?)" if abs(extra) == 1 else "") + ".")
        elif not details and got.ndim != expected.ndim:
            details.append(f"Looks like: {got.ndim} dimension(s) instead of {expected.ndim}: a reduction without "
                           "keepdim, or a missing or extra unsqueeze?")
        fail(f"{what}: wrong shape.", expected=f"shape {tuple(expected.shape)}", got=f"shape {tuple(got.shape)}",
             hint=hint, details=details)
    if check_dtype and got.dtype != expected.dtype:
        fail(f"{what}: wrong dtype.", expected=expected.dtype, got=got.dtype,
             hint=f"The result should have dtype {expected.dtype}: give new tensors the dtype of the input. " + hint)
    compare_dtype = torch.complex128 if expected.is_complex() else torch.float64
    got_cmp = got.detach().cpu().to(compare_dtype)
    expected_cmp = expected.detach().cpu().to(compare_dtype)
    close = torch.isclose(got_cmp, expected_cmp, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return
    wrong = ~close
    error = (got_cmp - expected_cmp).abs()
    error = torch.where(wrong, torch.nan_to_num(error, nan=float("inf")), torch.zeros_like(error))
    flat_index = int(error.reshape(-1).argmax())
    index = tuple(int(i) for i in np.unravel_index(flat_index, tuple(expected.shape))) if expected.ndim else ()
    want, have = _distinct(expected_cmp[index].item(), got_cmp[index].item())
    tolerance = "exact comparison" if rtol == atol == 0 else f"tolerance: |difference| ≤ {atol:g} + {rtol:g}·|expected|"
    where = f"the largest difference is at index {_index_text(index)}" if index else "the value differs"
    worst = (f"\n  {int(wrong.sum())} of {wrong.numel()} values differ; {where}: expected {want}, got {have} "
             f"({tolerance})")
    details = [] if _whole(expected) else _neighbourhood(got_cmp, expected_cmp, wrong, index)
    looks = known or ([] if expected.is_complex() else
                      [f"Looks like: {text}." for text in _looks_like(got_cmp, expected_cmp, scales)])
    fail(f"{what}: wrong values.{worst}", expected=expected, got=got, hint=hint, details=details + looks)


def check_raises_value_error(call: Callable[[], object], *, what: str, argument: str, hint: str) -> None:
    """`call()` must raise ValueError whose message names `argument`."""
    try:
        call()
    except ValueError as error:
        check(argument in str(error), f"{what} raised ValueError, but its message does not name '{argument}'.",
              expected=f"a message naming {argument!r} and its value", got=str(error),
              hint=f"Write e.g. f\"{argument}={{{argument}}} must be ...\" so the caller knows what to fix.")
    except NotImplementedError:
        raise  # an unattempted exercise: conftest.py reports it as not done yet
    except Exception as error:
        fail(f"{what} raised {type(error).__name__} instead of ValueError.", expected="ValueError",
             got=f"{type(error).__name__}: {error}", hint=hint)
    else:
        fail(f"{what} did not raise ValueError.", expected="ValueError", got="no exception", hint=hint)


def check_no_grad_history(got: torch.Tensor, *, what: str, hint: str = "") -> None:
    """The result must be a plain tensor, detached from any autograd graph."""
    if torch.is_tensor(got) and got.requires_grad:
        fail(f"{what}: the result still carries an autograd graph (requires_grad=True).",
             expected="a detached tensor (requires_grad=False)", got=f"requires_grad=True, grad_fn={got.grad_fn}",
             hint="Return result.detach(), or compute the last step under torch.no_grad(). " + hint)


def broken_rule(exercise: str, did: str, *, rule: int = 0, hint: str = "") -> None:
    """Fail because the answer broke rule number `rule` of the exercise (from the catalog); `did` says how."""
    broken = catalog.BY_NAME[exercise].rules[rule]
    fail(f"{exercise} breaks a rule of this exercise: {broken.says}.", expected=None, got=None, show_values=False,
         hint=hint, details=[f"  Yours: {did}.", f"  Why the rule: {broken.why}."])
