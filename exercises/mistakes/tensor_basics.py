"""Plausible wrong answers to the exercises of lesson 1 (tensor_basics.py), each a small change to
exercises/solutions/tensor_basics.py."""

from __future__ import annotations

from exercises.mistakes import Mistake

BROADCAST_BODY = (
    "ndim = max(len(shape_a), len(shape_b))\n"
    "    padded_a = (1,) * (ndim - len(shape_a)) + tuple(shape_a)\n"
    "    padded_b = (1,) * (ndim - len(shape_b)) + tuple(shape_b)\n"
    "    result = []\n"
    "    for size_a, size_b in zip(padded_a, padded_b):\n"
    "        if size_a != size_b and 1 not in (size_a, size_b):\n"
    '            raise ValueError(f"shapes {tuple(shape_a)} and {tuple(shape_b)} do not broadcast: "\n'
    '                             f"size {size_a} vs size {size_b} (sizes must be equal or 1)")\n'
    "        result.append(size_b if size_a == 1 else size_a)\n"
    "    return tuple(result)"
)
SOFTMAX_BODY = (
    "shifted = x - x.amax(dim=dim, keepdim=True)  # (...) with a size-1 `dim` broadcast back; every value ≤ 0\n"
    "    exp = shifted.exp()\n"
    "    return exp / exp.sum(dim=dim, keepdim=True)"
)
CHOLESKY_BODY = (
    "L = torch.linalg.cholesky(A)  # (n, n), lower triangular\n"
    "    Y = torch.linalg.solve_triangular(L, B, upper=False)  # (n, k)\n"
    "    return torch.linalg.solve_triangular(L.mT, Y, upper=True)  # (n, k)"
)

MISTAKES = [
    Mistake("vandermonde", "one_column_short", "Powers 0 … degree − 1: arange(degree) instead of arange(degree + 1).",
            change={"torch.arange(degree + 1,": "torch.arange(degree,"},
            shows="1 fewer along dimension 1 than expected (off by one?)"),
    Mistake("vandermonde", "decreasing_powers", "NumPy's default order: highest power first.",
            change={"torch.arange(degree + 1,": "torch.arange(degree, -1, -1,"},
            shows="the powers in decreasing order"),

    Mistake("sliding_windows", "last_window_missing", "n_windows = (n − size) // step, without the + 1.",
            change={"return x.unfold(0, size, step)":
                    "n_windows = (len(x) - size) // step\n"
                    "    return x.as_strided((n_windows, size), (step * x.stride(0), x.stride(0)),\n"
                    "                        x.storage_offset())"},
            shows="1 fewer along dimension 0 than expected (off by one?)"),
    Mistake("sliding_windows", "stacked_copy", "Right numbers, but torch.stack copies: not a view of x.",
            change={"return x.unfold(0, size, step)  # (n_windows, size), shares x's storage":
                    "return torch.stack([x[i:i + size] for i in range(0, len(x) - size + 1, step)])"},
            shows="breaks a rule of this exercise: a view of x, not a copy."),
    Mistake("sliding_windows", "no_validation",
            "Does not check its arguments (unfold raises RuntimeError, not ValueError).",
            change={"    if size < 1 or step < 1:\n"
                    '        raise ValueError(f"size={size} and step={step} must both be at least 1")\n'
                    "    if size > len(x):\n"
                    '        raise ValueError(f"size={size} is longer than x (length {len(x)})")\n': ""},
            shows="sliding_windows(x of length 5, size=6, step=1) raised RuntimeError"),

    Mistake("broadcast_shape", "aligned_left", "Pads the shorter shape on the right instead of the left.",
            change={"(1,) * (ndim - len(shape_a)) + tuple(shape_a)": "tuple(shape_a) + (1,) * (ndim - len(shape_a))",
                    "(1,) * (ndim - len(shape_b)) + tuple(shape_b)": "tuple(shape_b) + (1,) * (ndim - len(shape_b))"},
            shows="the shapes lined up on the left, where they do not fit"),
    Mistake("broadcast_shape", "max_of_sizes", "Takes the larger size per position and never raises.",
            change={"        if size_a != size_b and 1 not in (size_a, size_b):\n"
                    '            raise ValueError(f"shapes {tuple(shape_a)} and {tuple(shape_b)} do not broadcast: "\n'
                    '                             f"size {size_a} vs size {size_b} (sizes must be equal or 1)")\n': "",
                    "result.append(size_b if size_a == 1 else size_a)": "result.append(max(size_a, size_b))"},
            shows="the larger size at each position"),
    Mistake("broadcast_shape", "broken_rule_swallowed",
            "Right shapes, but from torch.broadcast_shapes, its RuntimeError caught and raised again as ValueError.",
            change={BROADCAST_BODY:
                    "try:\n"
                    "        return tuple(torch.broadcast_shapes(shape_a, shape_b))\n"
                    "    except RuntimeError as error:\n"
                    '        raise ValueError(f"{shape_a} and {shape_b} do not broadcast") from error'},
            shows="breaks a rule of this exercise: the broadcasting rule by hand"),
    Mistake("broadcast_shape", "broadcast_shapes_alias",
            "Right shapes, but from torch.broadcast_shapes imported under another name.",
            setup="from torch import broadcast_shapes as bs",
            change={BROADCAST_BODY:
                    "try:\n"
                    "        return tuple(bs(shape_a, shape_b))\n"
                    "    except RuntimeError as error:\n"
                    '        raise ValueError(f"{shape_a} and {shape_b} do not broadcast") from error'},
            shows="breaks a rule of this exercise: the broadcasting rule by hand"),

    Mistake("stable_softmax", "no_shift", "Forgets to subtract the max: exp overflows for large inputs.",
            change={"shifted = x - x.amax(dim=dim, keepdim=True)  # (...) with a size-1 `dim` broadcast back; "
                    "every value ≤ 0\n    exp = shifted.exp()": "exp = x.exp()"},
            shows="yours holds NaN in 2 row(s), e.g. row [0], where the expected values"),
    Mistake("stable_softmax", "forgotten_keepdim",
            "amax/sum without keepdim=True: the reduced shape no longer broadcasts against x.",
            change={"x.amax(dim=dim, keepdim=True)": "x.amax(dim=dim)",
                    "exp.sum(dim=dim, keepdim=True)": "exp.sum(dim=dim)"},
            shows="two shapes that do not line up"),
    Mistake("stable_softmax", "normalised_over_all", "Divides by the sum over every element instead of along dim.",
            change={"exp.sum(dim=dim, keepdim=True)": "exp.sum()"},
            shows="normalised by the sum over every element, not along `dim`"),
    Mistake("stable_softmax", "calls_torch_softmax",
            "Right numbers, but calls torch.softmax instead of writing it out.",
            change={SOFTMAX_BODY: "return torch.softmax(x, dim=dim)"},
            shows="breaks a rule of this exercise: no softmax or log_softmax from torch"),
    Mistake("stable_softmax", "log_softmax_exp", "Right numbers, but from torch.log_softmax, exponentiated.",
            change={SOFTMAX_BODY: "return torch.log_softmax(x, dim).exp()"},
            shows="breaks a rule of this exercise: no softmax or log_softmax from torch"),
    Mistake("stable_softmax", "softmax_alias", "Right numbers, but calls F.softmax imported under another name.",
            setup="from torch.nn.functional import softmax as normalise",
            change={SOFTMAX_BODY: "return normalise(x, dim)"},
            shows="breaks a rule of this exercise: no softmax or log_softmax from torch"),

    Mistake("cholesky_solve", "same_factor_twice", "Solves with L in both steps: computes L⁻¹L⁻¹B instead of L⁻ᵀL⁻¹B.",
            change={"solve_triangular(L.mT, Y, upper=True)": "solve_triangular(L, Y, upper=False)"},
            shows="both solves used L"),
    Mistake("cholesky_solve", "one_solve_only", "Stops after the forward substitution: returns Y = L⁻¹B.",
            change={"return torch.linalg.solve_triangular(L.mT, Y, upper=True)": "return Y"},
            shows="you stopped after the first triangular solve"),
    Mistake("cholesky_solve", "calls_solve",
            "Right numbers, but uses torch.linalg.solve instead of the Cholesky factor.",
            change={CHOLESKY_BODY: "return torch.linalg.solve(A, B)"},
            shows="breaks a rule of this exercise: the Cholesky factor and two triangular solves"),
    Mistake("cholesky_solve", "solve_ex",
            "Right numbers, but from torch.linalg.solve_ex instead of the Cholesky factor.",
            change={CHOLESKY_BODY: "return torch.linalg.solve_ex(A, B).result"},
            shows="breaks a rule of this exercise: the Cholesky factor and two triangular solves"),
    Mistake("cholesky_solve", "inverse_alias",
            "Right numbers, but multiplies by A's inverse, torch.linalg.inv imported under another name.",
            setup="from torch.linalg import inv as invert",
            change={CHOLESKY_BODY: "return invert(A) @ B"},
            shows="breaks a rule of this exercise: the Cholesky factor and two triangular solves"),

    Mistake("broadcast_shape", "numpy_broadcast_shapes", "Right shapes, from NumPy's broadcast_shapes.",
            setup="import numpy as np",
            change={BROADCAST_BODY: "return tuple(int(size) for size in np.broadcast_shapes(shape_a, shape_b))"},
            shows="breaks a rule of this exercise: the broadcasting rule by hand"),
    # The rules, reached another way: a direct call, an import under another name, a wrapper.
    Mistake("vandermonde", "calls_torch_vander", "Right numbers, but from torch.vander.",
            change={"return x.unsqueeze(1) ** powers": "return torch.vander(x, degree + 1, increasing=True)"},
            shows="breaks a rule of this exercise: no built-in Vandermonde"),
    Mistake("vandermonde", "numpy_vander_alias", "Right numbers, from NumPy's vander imported under another name.",
            setup="from numpy import vander as powers_table",
            change={"return x.unsqueeze(1) ** powers":
                    "return torch.from_numpy(powers_table(x.numpy(), degree + 1, increasing=True))"},
            shows="breaks a rule of this exercise: no built-in Vandermonde"),
    Mistake("stable_softmax", "aten_softmax", "Right numbers, from torch's operator itself, through torch.ops.",
            change={SOFTMAX_BODY: "return torch.ops.aten._softmax(x, dim, False)"},
            shows="breaks a rule of this exercise: no softmax or log_softmax from torch"),
    Mistake("cholesky_solve", "matrix_power_minus_one", "Right numbers, from A⁻¹ as matrix_power(A, -1).",
            change={CHOLESKY_BODY: "return torch.linalg.matrix_power(A, -1) @ B"},
            shows="breaks a rule of this exercise: the Cholesky factor and two triangular solves"),
]
