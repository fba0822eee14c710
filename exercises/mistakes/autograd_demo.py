"""Plausible wrong answers to the exercises of lesson 2 (autograd_demo.py), each a small change to
exercises/solutions/autograd_demo.py."""

from __future__ import annotations

from exercises.mistakes import Mistake

CHUNK_LOOP = (
    "for X_chunk, y_chunk in zip(torch.tensor_split(X, n_chunks), torch.tensor_split(y, n_chunks)):\n"
    "        # mean over the chunk × (chunk rows / n) = this chunk's part of the mean over all n rows\n"
    "        (loss_fn(model(X_chunk), y_chunk) * (len(X_chunk) / n)).backward()"
)
JVP_BODY = (
    "x = x.detach().requires_grad_(True)\n"
    "    y = f(x)  # (m,)\n"
    "    u = torch.zeros_like(y, requires_grad=True)  # any value works: uᵀJ is linear in u\n"
    "    (vjp,) = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True)  # (n,) = uᵀJ, a function of u\n"
    "    (jvp,) = torch.autograd.grad(vjp, u, grad_outputs=v)  # ∂(uᵀJ v)/∂u = J v, (m,)\n"
    "    return jvp"
)
SECOND_PASS = "(jvp,) = torch.autograd.grad(vjp, u, grad_outputs=v)  # ∂(uᵀJ v)/∂u = J v, (m,)\n    return jvp"

MISTAKES = [
    Mistake("vector_jacobian_product", "ignores_v", "Sums the output before backward: computes 1ᵀJ, whatever v is.",
            change={"torch.autograd.grad(f(x), x, grad_outputs=v)": "torch.autograd.grad(f(x).sum(), x)"},
            shows="1ᵀJ, the column sums of J, whatever v is"),
    Mistake("vector_jacobian_product", "changes_callers_x",
            "Right numbers, but switches on requires_grad of the caller's tensor.",
            change={"x = x.detach().requires_grad_(True)  # a new leaf: the caller's tensor stays untouched":
                    "x.requires_grad_(True)"},
            shows="vector_jacobian_product changed the caller's x: x.requires_grad is"),

    Mistake("accumulated_gradient", "equal_chunk_weights",
            "Divides every chunk's loss by n_chunks, though tensor_split makes chunks of different sizes.",
            change={"* (len(X_chunk) / n)": "/ n_chunks"},
            shows="each chunk weighted 1 / n_chunks"),
    Mistake("accumulated_gradient", "no_scaling",
            "Adds the chunk-mean gradients unscaled: about n_chunks times too large.",
            change={"(loss_fn(model(X_chunk), y_chunk) * (len(X_chunk) / n)).backward()":
                    "loss_fn(model(X_chunk), y_chunk).backward()"},
            shows="each chunk's mean loss counted in full"),
    Mistake("accumulated_gradient", "keeps_old_gradients",
            "Forgets zero_grad: the stale gradients are added to the new ones.",
            change={"model.zero_grad(set_to_none=True)\n    ": ""},
            shows="the stale gradients (100 in every entry) are still in .grad"),
    Mistake("accumulated_gradient", "one_full_batch",
            "Right gradient, but one backward on the full batch: no micro-batches at all.",
            change={CHUNK_LOOP: "loss_fn(model(X), y).backward()"},
            shows="breaks a rule of this exercise: micro-batches"),
    Mistake("accumulated_gradient", "one_backward_at_the_end",
            "Right gradient, but adds up the weighted chunk losses and calls backward once at the end: every chunk's "
            "graph is kept alive at once, so nothing is saved over one full batch.",
            change={"n = len(X)\n": "n = len(X)\n    total = 0.0\n",
                    "(loss_fn(model(X_chunk), y_chunk) * (len(X_chunk) / n)).backward()":
                    "total = total + loss_fn(model(X_chunk), y_chunk) * (len(X_chunk) / n)\n    total.backward()"},
            shows="breaks a rule of this exercise: micro-batches"),

    Mistake("newton_step", "plus_sign", "Steps uphill: x + H⁻¹g.",
            change={"x.detach() - torch.linalg.solve": "x.detach() + torch.linalg.solve"},
            shows="x + H⁻¹∇f: a step uphill, the sign of the step is flipped"),
    Mistake("newton_step", "gradient_step", "Forgets the Hessian: a plain gradient step x − g.",
            change={"hessian = torch.autograd.functional.hessian(f, x.detach())  # (n, n), reverse over reverse\n"
                    "    ": "",
                    "torch.linalg.solve(hessian, gradient)": "gradient"},
            shows="x − ∇f: a plain gradient step, without the Hessian"),
    Mistake("newton_step", "multiplies_by_hessian", "Multiplies the gradient by H instead of solving with it: x − H g.",
            change={"torch.linalg.solve(hessian, gradient)": "hessian @ gradient"},
            shows="x − H ∇f: multiplied by the Hessian instead of solving with it"),

    Mistake("Softplus", "forgets_grad_output",
            "Backward returns sigmoid(x), dropping the chain-rule factor grad_output.",
            change={"return grad_output * torch.sigmoid(x)": "return torch.sigmoid(x)"},
            shows="sigmoid(x) alone: grad_output is missing (the chain rule)"),
    Mistake("Softplus", "naive_forward", "Forward log1p(exp(x)): exp overflows to inf for large x in float32.",
            change={"return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))  # exp(−|x|) ≤ 1: no overflow":
                    "return torch.log1p(torch.exp(x))"},
            shows="yours holds inf at 1 position(s), e.g. [4], where the expected values"),
    Mistake("Softplus", "naive_backward", "Backward exp(x) / (1 + exp(x)): inf / inf = NaN for large x.",
            change={"grad_output * torch.sigmoid(x)": "grad_output * torch.exp(x) / (1 + torch.exp(x))"},
            shows="yours holds NaN at 1 position(s), e.g. [4], where the expected values"),
    Mistake("Softplus", "autograd_inside",
            "Returns F.softplus from a forward that autograd never sees, with a backward of the wrong sign.",
            setup="import torch.nn.functional as F",
            change={"return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))  # exp(−|x|) ≤ 1: no overflow":
                    "return F.softplus(x)",
                    "torch.sigmoid(x)": "torch.sigmoid(-x)"},
            shows="breaks a rule of this exercise: your own forward and backward"),

    Mistake("jacobian_vector_product", "computes_vjp", "One reverse pass seeded with v: that is vᵀJ, not J v.",
            change={"grad_outputs=u, create_graph=True)": "grad_outputs=v)", SECOND_PASS: "return vjp"},
            shows="vᵀJ, the other product"),
    Mistake("jacobian_vector_product", "builds_jacobian",
            "Right numbers, but builds the whole Jacobian with torch.func.jacrev.",
            change={JVP_BODY: "return torch.func.jacrev(f)(x.detach()) @ v"},
            shows="breaks a rule of this exercise: exactly two reverse passes"),
    Mistake("jacobian_vector_product", "row_by_row",
            "Right numbers, but one backward pass per output: the Jacobian, row by row.",
            change={"u = torch.zeros_like(y, requires_grad=True)  # any value works: uᵀJ is linear in u\n"
                    "    (vjp,) = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True)  "
                    "# (n,) = uᵀJ, a function of u\n    " + SECOND_PASS:
                    "rows = [torch.autograd.grad(y[k], x, retain_graph=True)[0] for k in range(len(y))]\n"
                    "    return torch.stack(rows) @ v"},
            shows="breaks a rule of this exercise: exactly two reverse passes"),
    Mistake("jacobian_vector_product", "no_create_graph",
            "Forgets create_graph=True in the first pass, so the second has nothing to differentiate.",
            change={"grad_outputs=u, create_graph=True)": "grad_outputs=u)"},
            shows="the first pass's result is not part of a graph, so the second pass"),
    Mistake("jacobian_vector_product", "forward_mode",
            "Right numbers, but from forward-mode AD (torch.autograd.forward_ad) instead of two reverse passes.",
            setup="import torch.autograd.forward_ad as fwAD",
            change={JVP_BODY: "with fwAD.dual_level():\n"
                              "        dual = fwAD.make_dual(x.detach(), v)\n"
                              "        return fwAD.unpack_dual(f(dual)).tangent"},
            shows="breaks a rule of this exercise: exactly two reverse passes"),
    Mistake("jacobian_vector_product", "jvp_alias",
            "Right numbers, but calls torch.func.jvp imported under another name.",
            setup="from torch.func import jvp as push_forward",
            change={JVP_BODY: "return push_forward(f, (x,), (v,))[1]"},
            shows="breaks a rule of this exercise: exactly two reverse passes"),

    # The rules, reached another way: a direct call, an import under another name, a wrapper.
    Mistake("vector_jacobian_product", "functional_vjp", "Right numbers, from torch.autograd.functional.vjp.",
            change={"(vjp,) = torch.autograd.grad(f(x), x, grad_outputs=v)":
                    "vjp = torch.autograd.functional.vjp(f, x, v)[1]"},
            shows="breaks a rule of this exercise: one reverse pass, no Jacobian"),
    Mistake("vector_jacobian_product", "jacobian_alias",
            "Right numbers, from the whole Jacobian, built by a function imported under another name.",
            setup="from torch.autograd.functional import jacobian as jac",
            change={"(vjp,) = torch.autograd.grad(f(x), x, grad_outputs=v)":
                    "vjp = torch.tensordot(v, jac(f, x.detach()), dims=v.ndim)"},
            shows="breaks a rule of this exercise: one reverse pass, no Jacobian"),
    Mistake("Softplus", "softplus_alias", "A forward that hands the work to F.softplus, imported under another name.",
            setup="from torch.nn.functional import softplus as smooth_relu",
            change={"return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))": "return smooth_relu(x)"},
            shows="breaks a rule of this exercise: your own forward and backward"),
]
