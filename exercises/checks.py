"""Comparisons that fail with a message a learner can act on: what was expected, what came, and a hint."""

from __future__ import annotations

import contextlib
import textwrap

import numpy as np
import pytest
import torch

PREVIEW_ELEMENTS = 24  # tensors with more values than this are shown by their first PREVIEW_HEAD values
PREVIEW_HEAD = 6
LABEL_WIDTH = 12  # "  expected: " and "  got:      " line up on this column
_ABSENT = object()  # marks an attribute that `forbidden` found inherited rather than set on its owner


def _show(value: object) -> str:
    """A short, readable rendering of a tensor, array or plain Python value."""
    if torch.is_tensor(value):
        array = value.detach().cpu()
        if array.dtype in (torch.bfloat16, torch.float16):
            array = array.float()
        described = f"(shape {tuple(value.shape)}, {value.dtype})"
        if array.numel() > PREVIEW_ELEMENTS:  # large: the first values in memory order are enough to compare
            head = np.array2string(array.reshape(-1)[:PREVIEW_HEAD].numpy(), precision=4, separator=", ")
            return f"{head[:-1]}, ...]  {described}, first {PREVIEW_HEAD} of {array.numel()} values"
        text = np.array2string(array.numpy(), precision=4, separator=", ", max_line_width=100)
        return f"{text}  {described}"
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=4, threshold=PREVIEW_ELEMENTS, separator=", ", max_line_width=100)
    return repr(value)


def _labelled(label: str, value: object) -> str:
    head = f"  {label}:".ljust(LABEL_WIDTH)
    lines = _show(value).splitlines() or [""]
    return "\n".join([head + lines[0], *(" " * LABEL_WIDTH + line for line in lines[1:])])


def fail(what: str, *, expected: object, got: object, hint: str, show_values: bool = True) -> None:
    """Stop the check with 'what', the expected and actual values, and a hint; no traceback."""
    lines = [what]
    if show_values:
        lines += [_labelled("expected", expected), _labelled("got", got)]
    lines.append("Hint: " + textwrap.dedent(hint).strip())
    # `from None`: when called while handling the learner's exception, show only this message.
    raise pytest.fail.Exception("\n".join(lines), pytrace=False) from None


def check(condition: bool, what: str, *, expected: object, got: object, hint: str) -> None:
    """Fail with the message unless `condition` holds."""
    if not condition:
        fail(what, expected=expected, got=got, hint=hint)


def check_equal(got: object, expected: object, *, what: str, hint: str) -> None:
    """Exact equality of plain Python values (ints, tuples, lists, strings)."""
    if type(got) is not type(expected) and not (isinstance(got, int) and isinstance(expected, int)):
        fail(f"{what}: wrong type.", expected=f"a {type(expected).__name__}, e.g. {expected!r}",
             got=f"a {type(got).__name__}: {got!r}", hint=hint)
    if got != expected:
        fail(f"{what}: wrong value.", expected=expected, got=got, hint=hint)


def check_close(got: object, expected: torch.Tensor, *, what: str, hint: str, rtol: float, atol: float,
                check_dtype: bool = True) -> None:
    """Compare a tensor with the reference: type, shape, dtype, then values within rtol/atol.

    Values pass when |got − expected| ≤ atol + rtol·|expected| everywhere (torch.isclose), NaN
    matching NaN and inf matching inf of the same sign.
    """
    if not torch.is_tensor(got):
        fail(f"{what}: expected a torch.Tensor.", expected=f"a tensor of shape {tuple(expected.shape)}",
             got=f"a {type(got).__name__}: {got!r}"[:200],
             hint="Return a tensor (torch.as_tensor converts a list or an array). " + hint)
    if got.shape != expected.shape:
        fail(f"{what}: wrong shape.", expected=f"shape {tuple(expected.shape)}", got=f"shape {tuple(got.shape)}",
             hint=hint)
    if check_dtype and got.dtype != expected.dtype:
        fail(f"{what}: wrong dtype.", expected=expected.dtype, got=got.dtype,
             hint=f"The result should have dtype {expected.dtype}: give new tensors the dtype of the input. " + hint)
    got_cmp = got.detach().cpu().to(torch.float64 if not expected.is_complex() else torch.complex128)
    expected_cmp = expected.detach().cpu().to(got_cmp.dtype)
    close = torch.isclose(got_cmp, expected_cmp, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return
    wrong = ~close
    error = (got_cmp - expected_cmp).abs()
    error = torch.where(wrong, torch.nan_to_num(error, nan=float("inf")), torch.zeros_like(error))
    flat_index = int(error.reshape(-1).argmax())
    index = tuple(int(i) for i in np.unravel_index(flat_index, tuple(expected.shape))) if expected.ndim else ()
    worst = (f"{int(wrong.sum())} of {wrong.numel()} values differ; the largest difference is at index {index}: "
             f"expected {expected_cmp[index].item():.6g}, got {got_cmp[index].item():.6g} "
             f"(tolerance: |difference| ≤ {atol:g} + {rtol:g}·|expected|)")
    fail(f"{what}: wrong values. {worst}", expected=expected, got=got, hint=hint)


def check_raises_value_error(call, *, what: str, argument: str, hint: str) -> None:
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


@contextlib.contextmanager
def forbidden(targets: list[tuple[object, str, str]], *, exercise: str, instead: str, hint: str):
    """While active, calling any target (owner, attribute, label) fails the check: the exercise is to do it by hand."""
    saved = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name, _ in targets]

    def refuse(label: str):
        def refused(*args, **kwargs):
            fail(f"{exercise} called {label}, which this exercise asks you to do without.", expected=instead,
                 got=f"a call to {label}", hint=hint)
        return refused

    try:
        for owner, name, label in targets:
            setattr(owner, name, refuse(label))
        yield
    finally:
        for owner, name, original in reversed(saved):
            if original is _ABSENT:  # the attribute was inherited: drop the stand-in, the inherited one shows again
                delattr(owner, name)
            else:
                setattr(owner, name, original)
