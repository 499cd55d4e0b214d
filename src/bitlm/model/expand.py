"""Function-preserving growth of a model: depth, width and context (``grow_to``).

A grown model computes what the model it grew from computed (to float rounding), so training
continues from the same loss instead of jumping back up:

* **depth**: new blocks go on top of the stack with zero output projections (attention's and the
  MLP's), so both branches return 0: a plain block is ``x + 0 + 0`` and a reversible one
  ``y1 = x1, y2 = x2``, the identity. Their other weights start as at initialisation; the
  projections' gradients are not zero, so the first update brings the new blocks into play.
* **width** (Net2WiderNet, Chen et al. 2016): every residual feature, attention head (head_dim
  kept) and MLP unit of the grown model is a copy of one of the old model's. A layer that writes
  a copied dimension copies its rows; a layer that reads it splits each old column over the
  column's copies with random positive shares that sum to 1 (so the copies receive different
  gradients and stop being copies after the first update)::

      W'[:, j] = share_j · W[:, index_j]        Σ_{j: index_j = i} share_j = 1

  The residual stream passes through LayerNorms, whose mean and variance are unchanged when every
  feature is copied the same number of times: a new ``d_model`` that is a multiple of the old is
  exact. Any other is not, and cannot be: keeping the mean and variance of d features extended
  linearly to d + m needs AᵀA = (m/d)·I on the (d−1)-dimensional centred subspace, which an
  m × d matrix A of rank ≤ m only has for m ≥ d − 1. ``grow_to`` then warns, and the grown model is
  close, not equal. ``d_ff`` and the head count may grow by any amount, exactly.
* **context**: ``max_seq_len`` grows; no weight depends on it (RoPE is relative, the frame
  embedding periodic), so on every input the old model accepted the grown one is the same.
  ``rope_scale`` (position interpolation) may change with it: that one is not function-preserving,
  it trades short-context fidelity for the longer window's angles staying in the trained range.

* **causal → frame diffusion**: a causal hierarchical model becomes a ``diffusion_unit=frame``
  diffusion model with every weight as it was (the same function with bidirectional attention,
  not the same function): the start of diffusion training by adaptation.

``Growth.sources`` says where each parameter came from, so the optimizer's state (Adam's moments)
follows the weights (``carry_optimizer_state``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from bitlm.core.errors import BitLMError
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

log = logging.getLogger(__name__)

GROWABLE = ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len")
"""Config fields a growth may increase."""
ADJUSTABLE = ("dropout", "rope_scale", "attn_chunk_size", "activation_checkpointing", "compile")
"""Config fields that change no weight and may be set freely when a model is grown."""
TO_FRAME_DIFFUSION = ("mode", "diffusion_unit", "noise_schedule")
"""Fields a causal hierarchical model may change to become a ``diffusion_unit=frame`` model:
the two have the same weights (``model/hierarchical.py``), so diffusion training can adapt a
trained causal model instead of starting from scratch."""

# Where each parameter's dimensions come from when the width grows: a name pattern (searched,
# so it matches at any depth of the model) → (dimension, axis, whether the layer reads the axis)
# for each grown dimension. Axes: the residual stream, the attention heads (as features), the
# packed [q | k | v] rows, the MLP's hidden units. The in-frame decoder (``local.``) keeps its
# own width and is never grown.
_WIDTH_AXES: tuple[tuple[str, tuple[tuple[int, str, bool], ...]], ...] = (
    (r"embedding\.weight$", ((1, "residual", False),)),
    (r"norm\.(weight|bias)$", ((0, "residual", False),)),
    (r"attn\.qkv\.weight$", ((0, "qkv", False), (1, "residual", True))),
    (r"attn\.qkv\.bias$", ((0, "qkv", False),)),
    (r"attn\.proj\.weight$", ((0, "residual", False), (1, "heads", True))),
    (r"g\.fc\.weight$", ((0, "ff", False), (1, "residual", True))),
    (r"g\.fc\.bias$", ((0, "ff", False),)),
    (r"g\.proj\.weight$", ((0, "residual", False), (1, "ff", True))),
    (r"(attn|g)\.proj\.bias$", ((0, "residual", False),)),
    (r"^(head|trunk\.halting\.units\.\d+)\.(weight|shared)$", ((1, "residual", True),)),
    (r"^(head|trunk\.halting\.units\.\d+)\.bias$", ()),
)
_NEW_BLOCK_ZEROS = re.compile(r"(attn|g)\.proj\.(weight|bias)$")
"""The output projections of a new block: zero, so the block starts as the identity."""


@dataclass(frozen=True)
class Replication:
    """How one grown dimension is filled from the old one: new entry j copies old entry
    ``index[j]`` and, where a layer reads the dimension, takes ``share[j]`` of that entry's
    weights (the shares of one old entry's copies sum to 1)."""

    index: Tensor
    share: Tensor

    @classmethod
    def grow(cls, old: int, new: int, generator: torch.Generator) -> Replication:
        """Entries 0 … old−1 first, then whole copies of them, then a random subset for the
        remainder; shares ∝ U(0.5, 1.5), normalised per old entry (exactly 1 for an uncopied
        one)."""
        whole = torch.arange(new - new % old) % old
        index = torch.cat((whole, torch.randperm(old, generator=generator)[: new % old]))
        weight = torch.rand(new, generator=generator) + 0.5
        total = torch.zeros(old).index_add_(0, index, weight)
        return cls(index, weight / total[index])

    def per_feature(self, size: int) -> Replication:
        """The same replication of groups of ``size`` consecutive features (heads of head_dim)."""
        offsets = torch.arange(size)
        index = (self.index[:, None] * size + offsets).flatten()
        return Replication(index, self.share.repeat_interleave(size))

    def stacked(self, parts: int, old: int) -> Replication:
        """The replication of ``parts`` consecutive blocks of ``old`` entries each ([q | k | v])."""
        index = torch.cat([self.index + p * old for p in range(parts)])
        return Replication(index, self.share.repeat(parts))

    def apply(self, t: Tensor, dim: int, reads: bool) -> Tensor:
        out = t.index_select(dim, self.index.to(t.device))
        if not reads:
            return out
        shape = [1] * t.dim()
        shape[dim] = -1
        return out * self.share.to(out).view(shape)


@dataclass(frozen=True)
class Source:
    """Where a grown parameter came from: the old parameter and how each dimension grew."""

    name: str
    axes: tuple[tuple[int, Replication, bool], ...]

    def carry(self, t: Tensor, shared: bool = True) -> Tensor:
        """``t`` (the old parameter, or optimizer state of its shape) grown; ``shared=False``
        copies without the readers' shares (for Adam's moments: a reader's copied column sees
        the gradient the old column saw)."""
        for dim, replication, reads in self.axes:
            t = replication.apply(t, dim, reads and shared)
        return t


@dataclass
class Growth:
    """A grown model and the source of each of its parameters that existed before (new ones —
    the blocks added on top — are absent)."""

    model: nn.Module
    sources: dict[str, Source]


def grow_to(
    model: nn.Module, target: ModelConfig, generator: torch.Generator | None = None
) -> Growth:
    """``model`` grown to the architecture ``target`` (deeper, wider and/or longer context than
    ``model.config``), computing the same function (see the module docstring); on the old
    model's device and dtype, in its train/eval mode. ``generator`` draws the width shares."""
    old = model.config
    check_growth(old, target)
    if target.d_model % old.d_model:
        log.warning(
            "d_model %d → %d is not a whole multiple: the grown model's LayerNorm statistics "
            "differ, so it is close to the old one, not equal",
            old.d_model,
            target.d_model,
        )
    reference = next(model.parameters())
    grown = build_model(target).to(device=reference.device, dtype=reference.dtype)
    axes = _width_axes(old, target, generator or torch.Generator().manual_seed(0))
    old_params = dict(model.named_parameters())
    sources = {}
    with torch.no_grad():
        for name, param in grown.named_parameters():
            if name in old_params:
                sources[name] = Source(name, _axes_of(name, axes))
                param.copy_(sources[name].carry(old_params[name].detach()))
            elif _NEW_BLOCK_ZEROS.search(name):
                param.zero_()
    grown.train(model.training)
    return Growth(grown, sources)


def _to_frame_diffusion(old: ModelConfig, target: ModelConfig) -> bool:
    return old.mode == "causal" and target.mode == "diffusion" and target.diffusion_unit == "frame"


def check_growth(old: ModelConfig, target: ModelConfig) -> None:
    """Refuse a target that is not a growth of ``old``: a smaller size, a different head
    width, or any change other than ``GROWABLE`` sizes and ``ADJUSTABLE`` settings (and
    ``TO_FRAME_DIFFUSION`` from a causal hierarchical model)."""
    free = GROWABLE + ADJUSTABLE + (TO_FRAME_DIFFUSION if _to_frame_diffusion(old, target) else ())
    changed = [
        f.name
        for f in fields(ModelConfig)
        if f.name not in free and getattr(old, f.name) != getattr(target, f.name)
    ]
    if changed:
        pairs = ", ".join(f"{n}: {getattr(old, n)!r} → {getattr(target, n)!r}" for n in changed)
        raise BitLMError(
            f"cannot grow the model into a different architecture ({pairs}); only "
            f"{', '.join(GROWABLE)} may grow: set the other model options as the model was trained"
        )
    shrunk = [n for n in GROWABLE if getattr(target, n) < getattr(old, n)]
    if shrunk:
        pairs = ", ".join(f"{n}: {getattr(old, n)} → {getattr(target, n)}" for n in shrunk)
        raise BitLMError(f"a model can only grow, but {pairs} would shrink it")
    if target.head_dim != old.head_dim:
        raise BitLMError(
            f"growing the width keeps each attention head's size (d_model / n_heads = "
            f"{old.head_dim}); set model.n_heads={target.d_model // old.head_dim} for "
            f"d_model={target.d_model}"
        )
    if old.use_act and target.n_layers != old.n_layers:
        raise BitLMError(
            "a model with ACT halting (model.use_act) cannot grow deeper: its halting weights "
            "every layer's state, so a new layer changes the output even as an identity"
        )


def _width_axes(
    old: ModelConfig, target: ModelConfig, generator: torch.Generator
) -> dict[str, Replication]:
    residual = Replication.grow(old.d_model, target.d_model, generator)
    heads = Replication.grow(old.n_heads, target.n_heads, generator).per_feature(old.head_dim)
    return {
        "residual": residual,
        "heads": heads,
        "qkv": heads.stacked(3, old.d_model),
        "ff": Replication.grow(old.d_ff, target.d_ff, generator),
    }


def _axes_of(name: str, axes: dict[str, Replication]) -> tuple[tuple[int, Replication, bool], ...]:
    if name.startswith("local."):
        return ()
    for pattern, dims in _WIDTH_AXES:
        if re.search(pattern, name):
            return tuple((dim, axes[axis], reads) for dim, axis, reads in dims)
    raise BitLMError(f"expand.py does not know how parameter {name!r} grows with the width")


def carry_optimizer_state(
    old: torch.optim.Optimizer, old_model: nn.Module, new: torch.optim.Optimizer, growth: Growth
) -> None:
    """Give each grown parameter in ``new`` the state its source had in ``old`` (Adam's step
    count and moments, the moments grown like the weight without the readers' shares); new
    parameters start without state, as in a fresh optimizer."""
    old_params = dict(old_model.named_parameters())
    for name, param in growth.model.named_parameters():
        source = growth.sources.get(name)
        state = old.state.get(old_params[source.name]) if source else None
        if not state:
            continue
        shape = old_params[source.name].shape
        new.state[param] = {
            key: source.carry(value, shared=False)
            if torch.is_tensor(value) and value.shape == shape
            else (value.clone() if torch.is_tensor(value) else value)
            for key, value in state.items()
        }
