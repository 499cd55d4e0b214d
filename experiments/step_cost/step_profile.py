"""Where a training step's time goes, plain stack against its reversible twin (torch.profiler).

The step is the one ``bitlm-bench train-throughput`` times (``throughput.plain_step``: autocast
forward, the module's loss, backward, AdamW, schedule). Ranges are added without touching the
model: every branch call (``block.f``, ``block.g``) is one range, named by whether autograd
records it (the plain forward and the reversible backward's recomputation) or not (the
reversible forward), and the reversible backward's per-branch ``torch.autograd.backward`` calls
(``blocks._backward``) are another. What the reversible backward spends outside both is its own
overhead: reconstructing inputs, adding gradients, leaf creation, Python.

    python experiments/step_cost/step_profile.py BYTES PRECISION [MODEL] [STEPS] [WINDOWS]
      e.g. python experiments/step_cost/step_profile.py 256 32-true small 3 16

Times are the profiler's (wall-clock, with its own overhead), per step, medians of nothing:
read them as shares, and take ratios from ``bitlm-bench train-throughput mode=stacks``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile, record_function

from bitlm.bench.loops import plain_step
from bitlm.bench.measure import corpus_batches
from bitlm.model import blocks
from bitlm.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
RECOMPUTED, NO_GRAD, BRANCH_BACKWARD = (
    "branch forward, grad",
    "branch forward, no grad",
    "branch backward",
)


def model_config(name: str, n_bytes: int, reversible: bool) -> ModelConfig:
    """configs/model/NAME.yaml (its ``defaults`` applied) at ``n_bytes`` of context."""
    node = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    for parent in node.pop("defaults", []):
        node = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "model" / f"{parent}.yaml"), node)
    config = ModelConfig.from_dict(OmegaConf.to_container(node))
    return dataclasses.replace(config, max_seq_len=9 * n_bytes, reversible=reversible)


def add_ranges(model: torch.nn.Module) -> None:
    """One profiler range per branch call, named by whether autograd records it."""
    open_ranges = []

    def enter(module, args):
        open_ranges.append(record_function(RECOMPUTED if torch.is_grad_enabled() else NO_GRAD))
        open_ranges[-1].__enter__()

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)

    for block in model.trunk.blocks:
        for branch in (block.f, block.g):
            branch.register_forward_pre_hook(enter)
            branch.register_forward_hook(leave)


def ranged_backward(output, x, grad_output):
    """``blocks._backward`` inside a profiler range."""
    with record_function(BRANCH_BACKWARD):
        return BACKWARD(output, x, grad_output)


BACKWARD = blocks._backward
blocks._backward = ranged_backward


def profile_steps(config: ModelConfig, precision: str, batch: torch.Tensor, steps: int) -> dict:
    """Per-step totals of the ranges and the self time of every op, over ``steps`` steps."""
    torch.manual_seed(0)
    model, step = plain_step(config, precision, steps + 1, torch.device("cpu"), {})
    add_ranges(model)
    step(batch)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("step"):
                step(batch)
    totals, ops = defaultdict(float), {}
    for event in prof.key_averages():
        totals[event.key] = event.cpu_time_total / 1e3 / steps
        ops[event.key] = (event.self_cpu_time_total / 1e3 / steps, event.count // steps)
    return {"totals": totals, "ops": ops}


def report(name: str, n_bytes: int, precision: str, steps: int, windows: int) -> str:
    """Markdown tables: the ranges per step, then the ops whose self time differs most."""
    batch = corpus_batches(1, windows, 9 * n_bytes, 0)[0]
    configs = [model_config(name, n_bytes, reversible) for reversible in (False, True)]
    plain, rev = (profile_steps(config, precision, batch, steps) for config in configs)
    p, r = plain["totals"], rev["totals"]
    backward = r["_ReversibleFunctionBackward"]
    rest = backward - r[RECOMPUTED] - r[BRANCH_BACKWARD]
    lines = [
        f"model={name} trunk={configs[0].trunk}, {n_bytes} bytes × {windows} windows, {precision}, "
        f"{torch.get_num_threads()} thread(s); ms per step (profiler clock, mean of {steps})",
        "| | plain | reversible |",
        "|---|---:|---:|",
        f"| step | {p['step']:.1f} | {r['step']:.1f} ({r['step'] / p['step']:.3f}×) |",
        f"| trunk forward (branches) | {p[RECOMPUTED]:.1f} | {r[NO_GRAD]:.1f} (no grad) |",
        f"| reversible backward | | {backward:.1f} |",
        f"| … recomputed branch forwards | | {r[RECOMPUTED]:.1f} |",
        f"| … branch backwards | | {r[BRANCH_BACKWARD]:.1f} |",
        f"| … the rest (reconstruction, gradient sums, leaves, Python) | | {rest:.1f} "
        f"({100 * rest / p['step']:.1f} % of the plain step) |",
        f"| AdamW | {p['Optimizer.step#AdamW.step']:.1f} | {r['Optimizer.step#AdamW.step']:.1f} |",
        "",
        "ops by extra self time per step, reversible − plain (ms; calls per step):",
        "| op | plain | calls | reversible | calls | extra |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    keys = set(plain["ops"]) | set(rev["ops"])
    extra = {k: rev["ops"].get(k, (0, 0))[0] - plain["ops"].get(k, (0, 0))[0] for k in keys}
    for key in sorted(keys, key=lambda k: -abs(extra[k]))[:16]:
        (a, na), (b, nb) = plain["ops"].get(key, (0, 0)), rev["ops"].get(key, (0, 0))
        lines.append(f"| `{key[:60]}` | {a:.1f} | {na} | {b:.1f} | {nb} | {extra[key]:+.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    n_bytes, precision = int(sys.argv[1]), sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else "small"
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    windows = int(sys.argv[5]) if len(sys.argv) > 5 else 16
    print(report(name, n_bytes, precision, steps, windows))
