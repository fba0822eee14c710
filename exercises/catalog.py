"""The course's record of every exercise: its section, difficulty, hints, rules and time limit.

The checks, their messages and `make exercises` read these, never the docstrings in exercises/<lesson>.py:
those are yours to edit. A test keeps each docstring's "Section:" and "Hint:" lines equal to what is here.
Hint 1 (`idea`) points at the idea; hint 2 (`recipe`, shown with HINT=2) is close to the code itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LEVELS = {1: "★", 2: "★★", 3: "★★★"}  # difficulty: a short function / a few ideas at once / a whole component
TIME_LIMIT_S = 10.0  # what one check may take unless the exercise says otherwise: far above a right answer's
TIME_LIMIT_SCALE_ENV = "EXERCISES_TIME_SCALE"  # multiplies every limit (the maintainers' tests shorten them)
HINT_ENV = "HINT"  # HINT=2 adds the recipe to every failure message
NOT_DONE = "not done yet"  # how an unattempted exercise's message starts (the summary classifies by it)


@dataclass(frozen=True)
class Rule:
    says: str  # the rule as the learner reads it, e.g. "no softmax from torch: write exp and sum yourself"
    why: str  # why the exercise asks for it
    banned: tuple[str, ...] = ()  # dotted names of functions or classes ("torch.Tensor.softmax", "numpy.vander")
    banned_files: tuple[str, ...] = ()  # modules all of whose Python code is banned ("torch.optim.sgd")
    banned_ops: tuple[str, ...] = ()  # torch operators, whatever called them ("_softmax" for aten::_softmax)


@dataclass(frozen=True)
class Exercise:
    lesson: str  # the lesson's module name, e.g. "tensor_basics"
    name: str  # the function or class in exercises/<lesson>.py
    section: str  # the heading of the lesson section it practises
    level: int  # 1, 2 or 3: see LEVELS
    idea: str  # hint 1: the idea, not the code
    recipe: str  # hint 2: the steps, close to the code
    rules: tuple[Rule, ...] = ()  # what the exercise asks you not to use, checked however you reach it
    time_limit_s: float = TIME_LIMIT_S
    crashes: tuple[tuple[str, str], ...] = ()  # (text in an error your code raised, what it usually means)

    @property
    def stars(self) -> str:
        return LEVELS[self.level]

    def limit_s(self) -> float:
        return self.time_limit_s * float(os.environ.get(TIME_LIMIT_SCALE_ENV) or 1.0)


def hint_level() -> int:
    """1 unless HINT=2 (or more) asks for the recipe too."""
    value = os.environ.get(HINT_ENV, "").strip()
    return 2 if value.isdigit() and int(value) >= 2 else 1


NO_AUTOGRAD = Rule(
    "no autograd: the gradient comes from the formula you derive",
    "deriving ∂L/∂w by hand is the exercise, and the formula is what autograd will be checked against",
    banned=("torch.autograd.grad", "torch.autograd.backward", "torch.Tensor.backward", "torch.func.grad",
            "torch.func.vjp"),
)
NO_JACOBIAN_HELPERS = ("torch.func.jvp", "torch.func.vjp", "torch.func.jacrev", "torch.func.jacfwd",
                       "torch.func.hessian", "torch.func.linearize")
NO_OPTIMIZER = Rule(
    "no torch.optim and no nn: the update written out",
    "the exercise is the loop that optimizers and nn.Linear hide: the gradient step and clearing .grad",
    banned=("torch.optim.Optimizer", "torch.nn.Module"),
)

EXERCISES: tuple[Exercise, ...] = (
    # Lesson 1 --------------------------------------------------------------------------------------
    Exercise(
        "tensor_basics", "vandermonde", "Broadcasting", 1,
        idea="a column of x against a row of exponents: broadcasting does all the powers in one operation.",
        recipe="powers = torch.arange(degree + 1, device=x.device), shape (degree + 1,); x.unsqueeze(1), shape "
               "(n, 1), raised to powers broadcasts to (n, degree + 1).",
        rules=(Rule("no built-in Vandermonde: build it with broadcasting",
                    "the exercise is the broadcast of a column against a row",
                    banned=("torch.vander", "torch.linalg.vander", "numpy.vander")),),
    ),
    Exercise(
        "tensor_basics", "sliding_windows", "Memory sharing", 2,
        idea="a window is a view with two strides: one to the next window, one to the next element.",
        recipe="x.unfold(0, size, step) does exactly this; or x.as_strided((n_windows, size), (step * "
               "x.stride(0), x.stride(0)), x.storage_offset()) with n_windows = (n − size) // step + 1. "
               "torch.stack of slices copies.",
        rules=(Rule("a view of x, not a copy",
                    "windows overlap: a view costs no memory, a copy repeats each element size / step times"),),
    ),
    Exercise(
        "tensor_basics", "broadcast_shape", "Broadcasting", 2,
        idea="line the two shapes up on the right; each position either agrees, or one side is 1.",
        recipe="pad the shorter shape with leading 1s; per position the sizes must be equal or one of them 1, "
               "and the result takes the other (0 counts like any size other than 1); otherwise raise ValueError "
               "naming both shapes.",
        rules=(Rule("the broadcasting rule by hand: no torch.broadcast_shapes, NumPy's helpers or tensors",
                    "the exercise is the rule itself, which those functions apply for you",
                    banned=("torch.broadcast_shapes", "torch.broadcast_tensors", "torch.broadcast_to",
                            "torch.empty", "torch.zeros", "torch.ones", "torch.tensor",
                            "numpy.broadcast_shapes", "numpy.broadcast_arrays", "numpy.broadcast_to",
                            "numpy.empty", "numpy.zeros", "numpy.ones")),),
    ),
    Exercise(
        "tensor_basics", "stable_softmax", "Broadcasting", 1,
        idea="softmax does not change when you subtract the same number from every entry along `dim`.",
        recipe="shifted = x − x.amax(dim, keepdim=True) (every value ≤ 0, so exp cannot overflow); exp; divide by "
               "the sum along dim with keepdim=True, so the (…, 1) sum broadcasts back against x.",
        rules=(Rule("no softmax or log_softmax from torch: exp and sum written out",
                    "the exercise is the max-shift that those functions do for you",
                    banned=("torch.softmax", "torch.log_softmax", "torch.Tensor.softmax", "torch.Tensor.log_softmax",
                            "torch.nn.functional.softmax", "torch.nn.functional.log_softmax",
                            "torch.special.softmax", "torch.special.log_softmax", "torch.nn.Softmax",
                            "torch._softmax", "torch._log_softmax"),
                    banned_ops=("_softmax", "_log_softmax", "_safe_softmax")),),
    ),
    Exercise(
        "tensor_basics", "cholesky_solve", "Linear algebra with torch.linalg, in float64 and float32", 2,
        idea="A = L Lᵀ turns one hard solve into two easy triangular ones.",
        recipe="L = torch.linalg.cholesky(A); Y = torch.linalg.solve_triangular(L, B, upper=False) (L Y = B); "
               "then X = torch.linalg.solve_triangular(L.mT, Y, upper=True) (Lᵀ X = Y).",
        rules=(Rule("the Cholesky factor and two triangular solves: no general solver or inverse",
                    "the exercise is how a factorisation turns one solve into two cheap ones",
                    banned=("torch.linalg.solve", "torch.linalg.solve_ex", "torch.linalg.inv", "torch.linalg.inv_ex",
                            "torch.linalg.pinv", "torch.linalg.lstsq", "torch.linalg.tensorsolve",
                            "torch.cholesky_solve", "torch.cholesky_inverse", "torch.inverse", "torch.linalg.lu_solve",
                            "torch.linalg.ldl_solve", "torch.Tensor.inverse", "torch.Tensor.cholesky_solve",
                            "numpy.linalg.solve", "numpy.linalg.inv", "numpy.linalg.lstsq", "numpy.linalg.pinv",
                            "scipy.linalg.solve", "scipy.linalg.inv", "scipy.linalg.cho_solve", "scipy.linalg.lstsq"),
                    banned_ops=("linalg_inv_ex", "_linalg_solve_ex", "linalg_solve_ex", "linalg_lstsq",
                                "cholesky_solve", "_cholesky_solve_helper", "linalg_lu_solve", "linalg_ldl_solve",
                                "linalg_pinv")),),
    ),
    # Lesson 2 --------------------------------------------------------------------------------------
    Exercise(
        "autograd_demo", "vector_jacobian_product", "Gradients and vector-Jacobian products", 1,
        idea="one backward pass, seeded with v instead of ones, is exactly vᵀJ.",
        recipe="x_copy = x.detach().requires_grad_(); y = f(x_copy); torch.autograd.grad(y, x_copy, "
               "grad_outputs=v) (or y.backward(gradient=v) and read x_copy.grad). Summing y first gives 1ᵀJ.",
        rules=(Rule("one reverse pass, no Jacobian",
                    "a VJP costs one backward pass whatever the sizes; that is why backpropagation is cheap",
                    banned=("torch.autograd.functional.jacobian", "torch.autograd.functional.vjp",
                            *NO_JACOBIAN_HELPERS)),),
    ),
    Exercise(
        "autograd_demo", "accumulated_gradient", "Gradient accumulation", 2,
        idea=".grad adds up over backward calls; each chunk's share of the full-batch mean is what to add.",
        recipe="model.zero_grad(); for each pair from zip(torch.tensor_split(X, n_chunks), torch.tensor_split(y, "
               "n_chunks)): (loss_fn(model(X_chunk), y_chunk) * len(X_chunk) / n).backward(). The chunks can "
               "differ in size (10 rows in 3: 4, 3, 3), so 1 / n_chunks is not the same weight.",
        rules=(Rule("micro-batches: one chunk per forward pass, one backward per chunk",
                    "accumulation exists for batches too large for one forward pass"),),
    ),
    Exercise(
        "autograd_demo", "newton_step", "Hessians and Hessian-vector products", 2,
        idea="Newton's step is the minimum of the local quadratic model: curvature (H) and slope (∇f) together.",
        recipe="g = torch.autograd.grad(f(x), x)[0] with x a fresh leaf; H = torch.autograd.functional.hessian(f, "
               "x); return x − torch.linalg.solve(H, g) (solve, do not invert; minus, not plus).",
    ),
    Exercise(
        "autograd_demo", "Softplus", "Custom autograd Functions", 2,
        idea="forward computes and saves what backward needs; backward multiplies the local derivative by "
             "grad_output (the chain rule).",
        recipe="forward: ctx.save_for_backward(x); return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs())) "
               "(never overflows). backward: (x,) = ctx.saved_tensors; return grad_output * torch.sigmoid(x).",
        rules=(Rule("your own forward and backward: no F.softplus",
                    "the exercise is the pair of functions autograd calls, and keeping both finite",
                    banned=("torch.nn.functional.softplus", "torch.nn.Softplus")),),
    ),
    Exercise(
        "autograd_demo", "jacobian_vector_product", "Jacobians, four ways", 3,
        idea="uᵀJ is linear in u; differentiate it with respect to u, and J v comes out.",
        recipe="u = torch.zeros_like(y, requires_grad=True); g = torch.autograd.grad(y, x, grad_outputs=u, "
               "create_graph=True)[0] (= uᵀJ); then torch.autograd.grad(g, u, grad_outputs=v)[0] = J v.",
        rules=(Rule("exactly two reverse passes: no torch.func, torch.autograd.functional or forward-mode AD",
                    "the double-backward trick gets J v from reverse mode alone, at the cost of two passes "
                    "whatever the size of J",
                    banned=NO_JACOBIAN_HELPERS, banned_files=("torch.autograd.functional",
                                                              "torch.autograd.forward_ad")),),
        crashes=(("does not require grad", "the first pass's result is not part of a graph, so the second pass has "
                                           "nothing to differentiate: the first pass needs create_graph=True"),),
    ),
    # Lesson 3 --------------------------------------------------------------------------------------
    Exercise(
        "linear_regression_torch", "mse_gradients", "Solver 1: NumPy with the gradient derived by hand", 1,
        idea="differentiate the square (a factor 2) and the mean (a factor 1/n) of the residuals.",
        recipe="r = X @ w + b − y, shape (n,); grad_w = (2 / n) · Xᵀ r, shape (f,); grad_b = (2 / n) · r.sum(), "
               "a 0-d tensor.",
        rules=(NO_AUTOGRAD,),
    ),
    Exercise(
        "linear_regression_torch", "least_squares", "The problem and its exact answer", 1,
        idea="the intercept is one more weight, on a feature that is always 1.",
        recipe="A = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], dim=1), shape (n, f + 1); "
               "torch.linalg.lstsq(A, y.unsqueeze(1)).solution: the first f entries are w, the last is b.",
    ),
    Exercise(
        "linear_regression_torch", "fit_linear_gd", "Solver 2: PyTorch tensors and autograd, no nn", 2,
        idea=".grad adds up over backward calls; a step is loss, backward, update, clear.",
        recipe="w = torch.zeros(f, requires_grad=True) (b likewise); per epoch: loss = ((X @ w + b − y) ** "
               "2).mean(); loss.backward(); under torch.no_grad(): w -= lr * w.grad (b too); w.grad = None.",
        rules=(NO_OPTIMIZER,),
    ),
    Exercise(
        "linear_regression_torch", "MomentumSGD", "A custom optimizer", 3,
        idea="per parameter, a velocity that remembers past gradients; weight decay joins the gradient first.",
        recipe="super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay)); in a "
               "@torch.no_grad() step: for each group, each p with a grad: g = p.grad + wd·p; v = m·v + g "
               "(v = g the first time, in self.state[p]); p -= group['lr']·v.",
        rules=(Rule("your own step: nothing from torch.optim.SGD",
                    "the exercise is the update rule SGD applies",
                    banned_files=("torch.optim.sgd",)),),
    ),
    # Lesson 4 --------------------------------------------------------------------------------------
    Exercise(
        "custom_nn_module", "parameter_count", "A configurable MLP", 1,
        idea="count what each layer learns; running statistics are buffers, not parameters.",
        recipe="Linear: in·out + out (no + out without bias); BatchNorm and LayerNorm: 2·features; Embedding: "
               "num·dim; relu, tanh, dropout: 0; anything else raises ValueError naming the kind.",
        rules=(Rule("from the formulas: build no modules",
                    "knowing what a layer stores is the exercise; counting a built model is one line",
                    banned=("torch.nn.Module",)),),
    ),
    Exercise(
        "custom_nn_module", "LayerNorm", "Custom layers: Swish and inverted dropout", 2,
        idea="normalise each row over its last dimension, then let learned parameters scale and shift it.",
        recipe="weight = nn.Parameter(torch.ones(n)), bias = nn.Parameter(torch.zeros(n)); forward: mean and "
               "x.var(dim=-1, correction=0, keepdim=True); (x − mean) / torch.sqrt(var + eps) * weight + bias.",
        rules=(Rule("tensor operations only: no nn.LayerNorm or F.layer_norm",
                    "the exercise is the normalisation those layers do",
                    banned=("torch.nn.LayerNorm", "torch.nn.functional.layer_norm", "torch.layer_norm",
                            "torch.native_layer_norm", "torch.nn.functional.group_norm",
                            "torch.nn.functional.batch_norm", "torch.nn.functional.instance_norm"),
                    banned_ops=("native_layer_norm", "native_batch_norm", "_native_batch_norm_legit",
                                "native_group_norm")),),
    ),
    Exercise(
        "custom_nn_module", "record_output_shapes", "Looking inside: hooks", 1,
        idea="a forward hook sees each module's output; a hook left behind fires on every later call.",
        recipe="handles = [m.register_forward_hook(...) for name, m in model.named_modules() if not "
               "list(m.children())]; try: model(x) finally: for h in handles: h.remove().",
    ),
    Exercise(
        "custom_nn_module", "MultiHeadSelfAttention", "Self-attention", 3,
        idea="each head attends within its own slice of d_model; the causal mask hides the future, not the present.",
        recipe="q, k, v = self.in_proj(x).chunk(3, dim=-1); each .view(batch, seq, n_heads, head_dim)"
               ".transpose(1, 2); scores = q @ k.transpose(-2, -1) / sqrt(head_dim); causal: masked_fill(ones(seq, "
               "seq, dtype=bool).triu(1), -inf); softmax(-1) @ v; .transpose(1, 2).reshape(batch, seq, d_model); "
               "out_proj.",
        rules=(Rule("tensor operations only: no scaled_dot_product_attention or nn.MultiheadAttention",
                    "the exercise is what those functions compute",
                    banned=("torch.nn.functional.scaled_dot_product_attention",
                            "torch.nn.functional.multi_head_attention_forward", "torch.nn.MultiheadAttention"),
                    banned_ops=("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                                "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                                "_safe_softmax", "_native_multi_head_attention")),),
    ),
    # Lesson 5 --------------------------------------------------------------------------------------
    Exercise(
        "dataset_loader_demo", "CharDataset", "Text: character-level tokens", 1,
        idea="the target is the input one character later; the last target must end at the last character.",
        recipe="in __init__: vocab = sorted(set(text)), tokens = torch.tensor([vocab.index(c) ...], dtype=long); "
               "len = len(text) − seq_len; item i = (tokens[i:i + seq_len], tokens[i + 1:i + seq_len + 1]).",
    ),
    Exercise(
        "dataset_loader_demo", "pad_and_sort_collate", "Collation: padding variable-length sequences", 2,
        idea="sort by length, longest first, and move every part of an item together; padding goes at the end.",
        recipe="order = sorted(range(B), key=lambda i: -len(batch[i][0])) (stable); "
               "torch.nn.utils.rnn.pad_sequence([batch[i][0] for i in order], batch_first=True); lengths and "
               "labels in the same order.",
    ),
    Exercise(
        "dataset_loader_demo", "BucketBatchSampler",
        "Sampling: balancing classes, sharding for distributed training", 3,
        idea="batch neighbours in length order, then shuffle which batch comes when, with the generator given.",
        recipe="order = sorted(range(n), key=lengths.__getitem__); batches = [order[i:i + batch_size] for i in "
               "range(0, n, batch_size)]; in __iter__, visit them in torch.randperm(len(batches), "
               "generator=self.generator) order.",
        rules=(Rule("draw only from the generator you were given",
                    "a sampler that touches torch's global RNG changes the caller's other random draws"),),
    ),
    # Lesson 6 --------------------------------------------------------------------------------------
    Exercise(
        "digits_classifier", "label_smoothing_cross_entropy",
        "Losses: cross-entropy on logits, and label smoothing as a module", 2,
        idea="the smoothed target is a mixture: mostly the true class, a little of every class.",
        recipe="logp = F.log_softmax(logits, dim=1); loss per sample = −(1 − s)·logp[i, target] − s·logp[i].mean(); "
               "then the mean over the batch.",
        rules=(Rule("written out: no F.cross_entropy or nn.CrossEntropyLoss",
                    "the exercise is what label_smoothing= does inside them",
                    banned=("torch.nn.functional.cross_entropy", "torch.nn.CrossEntropyLoss",
                            "torch._C._nn.cross_entropy_loss")),),
    ),
    Exercise(
        "digits_classifier", "warmup_cosine_lr", "Optimisation: parameter groups, a schedule, gradient clipping", 1,
        idea="two pieces: a straight line up over the warm-up, then half a cosine down over the rest.",
        recipe="step < warmup_steps: peak_lr · (step + 1) / warmup_steps; after: p = min(1, (step − warmup_steps) "
               "/ (total_steps − warmup_steps)) and peak_lr · (1 + math.cos(math.pi · p)) / 2.",
        rules=(Rule("the formula: no torch.optim.lr_scheduler",
                    "the exercise is the schedule those classes compute",
                    banned_files=("torch.optim.lr_scheduler",)),),
    ),
    Exercise(
        "digits_classifier", "train_digits_classifier", "The loop: train, evaluate, stop early", 3,
        idea="a small MLP, Adam and a few epochs suffice; every random draw comes from `seed`.",
        recipe="inside torch.random.fork_rng(devices=[]) after torch.manual_seed(seed): an MLP 64 → 128 → 10; "
               "Adam(lr=5e-3); 10 epochs of batches of 64 from torch.randperm(n, generator=gen); zero_grad, "
               "cross-entropy, backward, step.",
        rules=(Rule("leave torch's global random state as it was",
                    "a function that reseeds the global RNG changes every later random draw of its caller"),),
        time_limit_s=60.0,
    ),
)

BY_NAME = {exercise.name: exercise for exercise in EXERCISES}


def lesson_exercises(lesson: str) -> list[Exercise]:
    return [exercise for exercise in EXERCISES if exercise.lesson == lesson]
