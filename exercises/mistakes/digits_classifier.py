"""Plausible wrong answers to the exercises of lesson 6 (digits_classifier.py), each a small change to
exercises/solutions/digits_classifier.py."""

from __future__ import annotations

from exercises.mistakes import Mistake

SMOOTHED_LOSS = (
    "log_probs = F.log_softmax(logits, dim=1)  # (B, C), finite for any finite logits\n"
    "    true_class = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B,)\n"
    "    uniform = -log_probs.mean(dim=1)  # (B,)\n"
    "    return ((1.0 - smoothing) * true_class + smoothing * uniform).mean()"
)
SCHEDULE = (
    "if step < warmup_steps:\n"
    "        return peak_lr * (step + 1) / warmup_steps\n"
    "    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))\n"
    "    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))"
)

MISTAKES = [
    Mistake("label_smoothing_cross_entropy", "log_of_softmax",
            "Takes the log of a softmax: exp(1000) rounds the small probabilities to 0 and their log to −inf.",
            change={"F.log_softmax(logits, dim=1)  # (B, C), finite for any finite logits":
                    "torch.log(torch.softmax(logits, dim=1))  # (B, C)"},
            shows="yours holds inf, where the expected values are finite"),
    Mistake("label_smoothing_cross_entropy", "spreads_over_the_other_classes",
            "Spreads the smoothing over the C − 1 wrong classes only (another convention, not torch's).",
            change={"uniform = -log_probs.mean(dim=1)  # (B,)":
                    "uniform = (-log_probs.sum(dim=1) - true_class) / (logits.shape[1] - 1)  # (B,), the others"},
            shows="the smoothing spread over the C − 1 wrong classes only"),
    Mistake("label_smoothing_cross_entropy", "sums_over_the_batch",
            "Sums over the batch instead of averaging: B times too large.",
            change={"smoothing * uniform).mean()": "smoothing * uniform).sum()"},
            shows="yours is 6× the expected value everywhere — the sum over the batch of"),
    Mistake("label_smoothing_cross_entropy", "no_range_check", "Right loss, but accepts smoothing=1.5 silently.",
            change={"if not 0.0 <= smoothing <= 1.0:\n"
                    '        raise ValueError(f"smoothing={smoothing} must be in [0, 1]")\n    ': ""},
            shows="smoothing=1.5 did not raise ValueError"),
    Mistake("label_smoothing_cross_entropy", "cross_entropy_alias",
            "Right loss, but from F.cross_entropy(label_smoothing=...) imported under another name.",
            setup="from torch.nn.functional import cross_entropy as ce",
            change={SMOOTHED_LOSS: "return ce(logits, target, label_smoothing=smoothing)"},
            shows="breaks a rule of this exercise: written out"),

    Mistake("warmup_cosine_lr", "first_step_at_zero",
            "Warm-up from step / warmup_steps: the first step has rate 0 and the peak is never reached in the warm-up.",
            change={"peak_lr * (step + 1) / warmup_steps": "peak_lr * step / warmup_steps"},
            shows="the warm-up starts at 0"),
    Mistake("warmup_cosine_lr", "cosine_over_all_steps",
            "Runs the cosine over total_steps instead of the steps after the warm-up: it never reaches 0.",
            change={"(step - warmup_steps) / (total_steps - warmup_steps)": "(step - warmup_steps) / total_steps"},
            shows="the cosine runs over all total_steps, not over the steps after the"),
    Mistake("warmup_cosine_lr", "without_the_half", "Forgets the factor 1/2: the decay starts at twice the peak.",
            change={"peak_lr * 0.5 * (1.0 + math.cos": "peak_lr * (1.0 + math.cos"},
            shows="the decay is twice too high"),
    Mistake("warmup_cosine_lr", "rises_again", "No min(1, p): past total_steps the cosine climbs back up.",
            change={"min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))":
                    "(step - warmup_steps) / (total_steps - warmup_steps)"},
            shows="the rate after total_steps must stay at 0"),
    Mistake("warmup_cosine_lr", "uses_lr_scheduler",
            "Right rates, but read off a torch.optim.lr_scheduler.LambdaLR stepped `step` times on a dummy optimizer.",
            change={SCHEDULE:
                    "optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)\n"
                    "    span = total_steps - warmup_steps\n"
                    "    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (\n"
                    "        (s + 1) / warmup_steps if s < warmup_steps\n"
                    "        else 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup_steps) / span)))))\n"
                    "    for _ in range(step):\n"
                    "        optimizer.step()\n"
                    "        scheduler.step()\n"
                    "    return scheduler.get_last_lr()[0]"},
            shows="breaks a rule of this exercise: the formula"),

    Mistake("train_digits_classifier", "forgets_zero_grad",
            "Never clears the gradients: each step follows the sum of all gradients so far.",
            change={"            optimizer.zero_grad()\n": ""},
            shows="220 optimizer steps and no zero_grad call"),
    Mistake("train_digits_classifier", "undertrained", "One epoch of plain SGD with a small step: far from converged.",
            change={"torch.optim.Adam(model.parameters(), lr=DIGITS_LR)":
                    "torch.optim.SGD(model.parameters(), lr=0.01)",
                    "range(DIGITS_EPOCHS)": "range(1)"},
            shows="only 22 optimizer steps"),
    Mistake("train_digits_classifier", "reseeds_global_rng",
            "Accurate and reproducible, but calls torch.manual_seed on the caller's global RNG.",
            change={"with torch.random.fork_rng(devices=[]):  # initial weights from `seed`; the caller's RNG stays "
                    "untouched\n        torch.manual_seed(seed)\n        model": "torch.manual_seed(seed)\n    model"},
            shows="breaks a rule of this exercise: leave torch's global random state as it was."),
    Mistake("train_digits_classifier", "ignores_seed", "Accurate and reproducible, but always uses seed 0.",
            change={"torch.manual_seed(seed)": "torch.manual_seed(0)",
                    "torch.Generator().manual_seed(seed)": "torch.Generator().manual_seed(0)"},
            shows="train_digits_classifier gave the same model for seeds 0 and 1"),

    # The rules, reached another way: a direct call, an import under another name, a wrapper.
    Mistake("label_smoothing_cross_entropy", "calls_cross_entropy",
            "Right loss, from F.cross_entropy(label_smoothing=...).",
            change={SMOOTHED_LOSS: "return F.cross_entropy(logits, target, label_smoothing=smoothing)"},
            shows="breaks a rule of this exercise: written out"),
    Mistake("warmup_cosine_lr", "scheduler_alias",
            "Right rates, from a LambdaLR imported under another name, inside try/except.",
            setup="from torch.optim.lr_scheduler import LambdaLR as Schedule",
            change={SCHEDULE:
                    "try:\n"
                    "        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)\n"
                    "        Schedule(optimizer, lambda s: 1.0)\n"
                    "    except Exception:\n"
                    "        pass\n"
                    "    if step < warmup_steps:\n"
                    "        return peak_lr * (step + 1) / warmup_steps\n"
                    "    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))\n"
                    "    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))"},
            shows="breaks a rule of this exercise: the formula"),
    Mistake("train_digits_classifier", "weights_not_from_seed",
            "Keeps the caller's RNG untouched with fork_rng, but never seeds it: the initial weights come from "
            "whatever state the caller's global RNG is in.",
            change={"        torch.manual_seed(seed)\n": ""},
            shows="twice gave two different models"),
]
