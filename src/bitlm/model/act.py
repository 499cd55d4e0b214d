"""Adaptive computation time (Graves, 2016) over the layers of a stack.

After each layer l but the last, a halting unit reads every running position's state h_l and
gives a halting probability; a position halts at the first layer N where the probabilities would
reach ``act_threshold`` (or at the last layer), and its output is the halting-weighted mixture of
the states it went through::

    p_l = σ(w_l · h_l + b_l)                          (B, T), l < L − 1
    N   = min{ n : Σ_{l≤n} p_l ≥ act_threshold }      (or L − 1)
    R   = 1 − Σ_{l<N} p_l                             remainder
    out = Σ_{l<N} p_l · h_l + R · h_N                 weights (``halt_probs``) sum to 1
    ponder = mean_t (N_t + 1 + R_t)                   layers run plus the remainder

The task loss reaches the halting units through the mixture weights; the ponder term (weighted
by ``module.ponder_weight``) pushes towards halting earlier through R. A halted position's state
is no longer updated, but its keys and values still serve the positions that run, exactly as in
a dense pass, so KV-cached generation gives the same result as the full forward. Compute is saved
only at inference and only when every position of a batch has halted, which ends the stack
early; ``experiments/telemetry`` measures whether that happens.

Halting biases start at ``HALT_BIAS`` (p ≈ 0.05): an untrained model runs every layer and its
output is mostly the last state, as without halting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bitlm.model.config import ModelConfig

HALT_BIAS = -3.0

States = tuple[Tensor, ...]


class HaltingUnits(nn.Module):
    """One halting unit per layer but the last (that one always halts). ``last`` holds the
    record of the latest pass (see ``HaltingPass.output``) until the model hands it out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.units = nn.ModuleList(nn.Linear(config.d_model, 1) for _ in range(config.n_layers - 1))
        self.threshold = config.act_threshold
        self.last: dict[str, Tensor] = {}

    def reset_parameters(self) -> None:
        for unit in self.units:
            nn.init.zeros_(unit.weight)
            nn.init.constant_(unit.bias, HALT_BIAS)


class HaltingPass:
    """The bookkeeping of one forward pass over states (B, T, C): ``after_layer`` for each layer
    run, then ``output``. Lives only as long as the pass, so no activation outlives it."""

    def __init__(self, halting: HaltingUnits, states: States) -> None:
        B, T, _ = states[0].shape
        self.halting = halting
        self.run = torch.ones(B, T, 1, dtype=torch.bool, device=states[0].device)
        self.spent = states[0].new_zeros(B, T, 1, dtype=torch.float32)
        self.remainder = torch.zeros_like(self.spent)
        self.layers = torch.zeros_like(self.spent)
        self.weights: list[Tensor] = []
        self.mixture = tuple(torch.zeros_like(s) for s in states)

    def all_halted(self) -> bool:
        return not bool(self.run.any())

    def after_layer(self, layer: int, states: States) -> None:
        """Weigh the states (B, T, C) after ``layer`` into the output and halt where due."""
        units = self.halting.units
        if layer < len(units):
            h = sum(states) / len(states)
            p = torch.sigmoid(units[layer](h).float())  # (B, T, 1)
            halt = self.run & (self.spent + p >= self.halting.threshold)
        else:
            p, halt = torch.zeros_like(self.spent), self.run
        weight = torch.where(halt, 1 - self.spent, p) * self.run
        self.mixture = tuple(
            m + weight.to(s.dtype) * s for m, s in zip(self.mixture, states, strict=True)
        )
        self.remainder = torch.where(halt, 1 - self.spent, self.remainder)
        self.layers = self.layers + self.run
        self.spent = self.spent + p * (self.run & ~halt)
        self.weights.append(weight.squeeze(-1))
        self.run = self.run & ~halt

    def output(self) -> States:
        """The mixture of states. Records in ``halting.last``: ``halt_probs`` (B, T, layers
        run), each layer's weight in the mixture (summing to 1 per position), the
        differentiable ``ponder_cost`` and ``layers_run`` (mean layers per position)."""
        self.halting.last = {
            "halt_probs": torch.stack(self.weights, dim=-1),
            "ponder_cost": (self.layers + self.remainder).mean(),
            "layers_run": self.layers.mean(),
        }
        return self.mixture


def run_layers(
    blocks: nn.ModuleList,
    halting: HaltingUnits | None,
    states: States,
    step: Callable[[int, nn.Module, States], States],
    cached: bool,
) -> States:
    """Apply ``step(i, block, states)`` for each block in turn, under halting when given: halted
    positions keep their states and the output is the halting mixture. At inference, once every
    position has halted the remaining layers are skipped — not when ``cached`` (positions
    generated later need every layer's keys and values) and not in training, where every rank
    must use every parameter (DDP) and the check would sync the device at each layer."""
    if halting is None:
        for i, block in enumerate(blocks):
            states = step(i, block, states)
        return states
    record = HaltingPass(halting, states)
    early_exit = not cached and not torch.is_grad_enabled()
    for i, block in enumerate(blocks):
        if early_exit and record.all_halted():
            break
        updated = step(i, block, states)
        states = tuple(
            torch.where(record.run, new, old) for new, old in zip(updated, states, strict=True)
        )
        record.after_layer(i, states)
    return record.output()
