"""Diffusion sampling: iterative denoising of masked frames, and parity repair.

**Sampling** (``diffusion_generate``): the positions to fill start masked; at step k = S … 1 the
model predicts every masked unit (a bit, or for ``diffusion_unit=frame`` a whole byte: its 8
bits drawn one after another through the in-frame decoder), a value is drawn for each, and the
drawn units the model is most confident of are kept so that γ((k−1)/S) of them stay masked
(MaskGIT). The confidence is randomised: a drawn unit's score is log p + τ·(k/S)·g with g standard
Gumbel noise and τ = ``choice_temperature`` (MaskGIT's annealed choice temperature). Pure
confidence (τ = 0) lets the likeliest units go first, which for bytes means runs of spaces: every
bit model we measured (``experiments/diffusion``) collapsed into 64 spaces or dashes on some
seeds; τ = 1 keeps the samples varied, and τ → ∞ is the random order of the bound.

**Remasking** (``remask``, a budget of one step's slots): already-filled units compete for the
slots that stay masked too, scored by the log-probability they were drawn with (no fresh noise),
so a unit drawn on little evidence early can be masked again and redrawn once its neighbours are
known (ReMDM's confidence remasking). Last, a bit model's frames are made to decode by
``repair_parity``: in a frame of odd parity it flips the bit drawn with the lowest probability,
the most probable even-parity frame among single flips; a frame model computes parity.

**Batches** (``diffusion_generate_many``): prompts are denoised together, one window each per
round, rows whose windows have the same layout and denoising options in one pass. Every random
draw of a row comes from that row's own generator (``Draws``), so a prompt gets the same text
with the same seed whichever prompts it is denoised with.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor

from bitlm.core.bits import DATA_BITS, FRAME_BITS, bytes_to_bits
from bitlm.core.errors import BitLMError, check_deadline
from bitlm.generation.options import GenerationOptions, per_prompt
from bitlm.model.hierarchical import hide
from bitlm.model.noise import corruption_rate
from bitlm.model.transformer import MASK, TransformerLM, evaluating, shift_right


class Sample(NamedTuple):
    """A sampled continuation: bits (9n,) uint8 that always decode, and how many frames the
    parity repair had to change (always 0 for causal sampling, which computes parity bits)."""

    bits: Tensor
    parity_repairs: int


class Draws:
    """Uniform draws in [0, 1) for a batch of rows, each row's from its own generator (None:
    torch's global one for all rows), so that a row draws what it would alone."""

    def __init__(self, generators: Sequence[torch.Generator] | None, device: torch.device):
        self.generators, self.device = generators, device

    def uniform(self, shape: torch.Size) -> Tensor:
        """(B, …) draws: row b's ``shape[1:]`` from generator b."""
        if self.generators is None:
            return torch.rand(shape, device=self.device)
        return torch.stack([self._rand(shape[1:], g) for g in self.generators])

    def ragged(self, counts: Tensor) -> Tensor:
        """``counts.sum()`` draws, row b's ``counts[b]`` of them after row b−1's (the order of
        a boolean mask's selected positions)."""
        if self.generators is None:
            return torch.rand(int(counts.sum()), device=self.device)
        rows = zip(counts.tolist(), self.generators, strict=True)
        return torch.cat([self._rand((n,), g) for n, g in rows])

    def gumbel(self, shape: torch.Size) -> Tensor:
        """Standard Gumbel noise −log(−log U) (B, …)."""
        u = self.uniform(shape).clamp(1e-12, 1 - 1e-7)
        return -(-u.log()).log()

    def _rand(self, shape, generator: torch.Generator) -> Tensor:
        return torch.rand(shape, generator=generator, device=self.device)


def repair_parity(bits: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """Make every frame of bits (B, 9n) even: in each odd frame flip its bit of lowest
    ``confidence`` (B, 9n) (the probability with which it was drawn; +inf for given bits).
    Returns the repaired bits and the number of frames changed in each row (B,)."""
    frames = bits.view(bits.size(0), -1, FRAME_BITS)
    odd = frames.sum(-1) % 2 == 1  # (B, n)
    weakest = confidence.view_as(frames).argmin(-1, keepdim=True)  # (B, n, 1)
    flip = torch.zeros_like(frames, dtype=torch.bool).scatter_(-1, weakest, odd[..., None])
    return (frames ^ flip.to(frames.dtype)).view_as(bits), odd.sum(1)


@torch.no_grad()
def denoise(
    model: TransformerLM,
    symbols: Tensor,
    options: GenerationOptions,
    generators: Sequence[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """Fill the MASK positions of symbols (B, L) in ``options.diffusion_steps`` model passes
    (module docstring; ``options.schedule`` defaults to the model's ``noise_schedule``);
    returns the bits (B, L) long, parity-repaired, and the frames repaired per row (B,). Frames
    must be either wholly given or wholly masked. ``options.deadline``: ``check_deadline``
    before each pass. Row b draws from ``generators[b]`` (None: torch's global generator), which
    a caller denoising window after window keeps from one window to the next."""
    draws = Draws(generators, symbols.device)
    if model.config.diffusion_unit == "frame":
        return _denoise_frames(model, symbols, options, draws), symbols.new_zeros(len(symbols))
    return _denoise_bits(model, symbols, options, draws)


def _denoise_bits(
    model: TransformerLM,
    symbols: Tensor,
    options: GenerationOptions,
    draws: Draws,
) -> tuple[Tensor, Tensor]:
    """``denoise`` of a ``diffusion_unit=bit`` model, one bit per unit."""
    steps, temperature = options.diffusion_steps, options.temperature
    schedule = options.schedule or model.config.noise_schedule
    remask, choice_temperature = options.remask, options.choice_temperature
    x = symbols.long().clone()
    free = x == MASK
    masked = free.clone()
    confidence = torch.full(x.shape, math.inf, device=x.device)
    n_free = free.sum(1)
    for k in range(steps, 0, -1):
        check_deadline(options.deadline)
        logits, _ = model(x, causal=False)
        p_one = _bit_probability(logits, temperature)
        drawn = p_one > (0.5 if temperature == 0 else draws.uniform(x.shape))
        p_draw = torch.where(drawn, p_one, 1 - p_one)
        still_masked = (corruption_rate(schedule, (k - 1) / steps) * n_free).floor().long()
        # lowest score = stays (or becomes) masked; given bits, and without remask filled
        # ones, never compete
        score = p_draw
        if remask:
            score = torch.where(masked, p_draw, torch.where(x == 1, p_one, 1 - p_one))
        score = score.clamp_min(1e-12).log()
        if choice_temperature > 0:
            score = score + choice_temperature * k / steps * draws.gumbel(x.shape)
        if not remask:
            score = score.masked_fill(~masked, math.inf)
        score = score.masked_fill(~free, math.inf)
        now_masked = _lowest(score, still_masked) & free
        revealed = masked & ~now_masked
        x = torch.where(revealed, drawn.long(), x).masked_fill(now_masked, MASK)
        confidence = torch.where(revealed, p_draw, confidence)
        masked = now_masked
    return repair_parity(x, confidence)


def _denoise_frames(
    model: TransformerLM,
    symbols: Tensor,
    options: GenerationOptions,
    draws: Draws,
) -> Tensor:
    """``denoise`` of a ``diffusion_unit=frame`` model: the units are whole frames, a drawn
    frame's confidence is the log-probability of its byte, its parity bit is computed."""
    steps, schedule = options.diffusion_steps, options.schedule or model.config.noise_schedule
    frames = symbols.long().view(symbols.size(0), -1, FRAME_BITS).clone()
    free = (frames == MASK).all(-1)  # (B, n): the frames to fill
    masked, n_free = free.clone(), free.sum(1)
    drawn_with = torch.full(free.shape, math.inf, device=frames.device)  # log p when revealed
    for k in range(steps, 0, -1):
        check_deadline(options.deadline)
        drawn, log_p = _draw_frames(model, frames, masked, options.temperature, draws)
        still_masked = (corruption_rate(schedule, (k - 1) / steps) * n_free).floor().long()
        score = torch.where(masked, log_p, drawn_with if options.remask else math.inf)
        if options.choice_temperature > 0:
            noise = draws.gumbel(free.shape)
            score = score + torch.where(masked, options.choice_temperature * k / steps * noise, 0)
        score = score.masked_fill(~free, math.inf)
        now_masked = _lowest(score, still_masked) & free
        revealed = masked & ~now_masked
        frames = torch.where(revealed[..., None], drawn, frames)
        frames = frames.masked_fill(now_masked[..., None], MASK)
        drawn_with = torch.where(revealed, log_p, drawn_with)
        masked = now_masked
    return frames.flatten(1)


def _lowest(score: Tensor, counts: Tensor) -> Tensor:
    """A mask (B, U) of the ``counts[b]`` units of lowest ``score`` in each row: those that stay
    (or become) masked after a step."""
    ranks = score.argsort(dim=1, stable=True).argsort(dim=1)
    return ranks < counts.to(score.device)[:, None]


def _draw_frames(
    model: TransformerLM, frames: Tensor, hidden: Tensor, temperature: float, draws: Draws
) -> tuple[Tensor, Tensor]:
    """A frame drawn for each ``hidden`` position of frames (B, n, 9) with those unseen, its 8
    data bits one after another through the in-frame decoder at ``temperature`` (0: each bit's
    argmax) and its parity computed; returns frames with the drawn ones in place and the
    log-probability (B, n) each was drawn with (0 where nothing was drawn)."""
    contexts = model.frame_contexts(shift_right(hide(frames, hidden)), causal=False)
    contexts = contexts[hidden]  # (N, context_size): only the frames being drawn
    symbols = torch.full((contexts.size(0), 1), MASK, device=frames.device)
    log_p = torch.zeros(contexts.size(0), device=frames.device)
    per_row = hidden.sum(1)
    for j in range(DATA_BITS):
        p_one = _bit_probability(model.local(contexts, symbols)[:, j], temperature)
        bit = p_one > (0.5 if temperature == 0 else draws.ragged(per_row))
        log_p += torch.where(bit, p_one, 1 - p_one).clamp_min(1e-12).log()
        symbols = torch.cat((symbols, bit.long()[:, None]), dim=1)
    data = symbols[:, 1:]
    drawn, all_log_p = frames.clone(), torch.zeros(frames.shape[:2], device=frames.device)
    drawn[hidden] = torch.cat((data, data.sum(-1, keepdim=True) % 2), dim=1)
    all_log_p[hidden] = log_p
    return drawn, all_log_p


def _bit_probability(logits: Tensor, temperature: float) -> Tensor:
    """P(bit = 1) (B, L) from logits (B, L, 2) at ``temperature`` (0 = the greedy limit)."""
    logits = logits.float()
    margin = logits[..., 1] - logits[..., 0]
    return torch.sigmoid(margin / temperature) if temperature > 0 else torch.sigmoid(margin)


@torch.no_grad()
def diffusion_generate(
    model: TransformerLM,
    prompt: bytes,
    max_new_bytes: int,
    options: GenerationOptions | None = None,
) -> Sample:
    """Sample ``max_new_bytes`` bytes after ``prompt`` (and before ``options.suffix``:
    infilling) with a diffusion model in ``options.diffusion_steps`` denoising passes per window
    (``denoise``). Deterministic for given options (the seed included). ``options.deadline``:
    raise ``TimeLimitExceeded`` once ``time.monotonic()`` passes it (checked before every pass).

    The prompt, the new bytes and the suffix share the model's window (``max_seq_len / 9``
    bytes): the prompt keeps its last bytes that fit. Without a suffix, text longer than the
    window is made window by window, each conditioned on up to half a window of what came before.
    """
    return diffusion_generate_many(model, [prompt], max_new_bytes, options)[0]


@torch.no_grad()
def diffusion_generate_many(
    model: TransformerLM,
    prompts: Sequence[bytes],
    max_new_bytes: int,
    options: GenerationOptions | Sequence[GenerationOptions] | None = None,
) -> list[Sample]:
    """``diffusion_generate`` of every prompt (``options``: one for all or one per prompt),
    denoised together (module docstring): each gets what it gets alone."""
    options = per_prompt(options, prompts)
    _check_diffusion(model, max_new_bytes, options)
    rows = [_Row(model, prompt, o) for prompt, o in zip(prompts, options, strict=True)]
    with evaluating(model):
        while waiting := [row for row in rows if row.remaining(max_new_bytes) > 0]:
            groups: dict[tuple, list[_Row]] = defaultdict(list)
            for row in waiting:
                groups[row.plan(max_new_bytes)].append(row)
            for (*_, denoising), group in groups.items():
                symbols = torch.stack([row.window(max_new_bytes) for row in group])
                deadlines = [r.options.deadline for r in group if r.options.deadline is not None]
                denoising = replace(denoising, deadline=min(deadlines, default=None))
                generators = [row.generator for row in group]
                filled, repairs = denoise(model, symbols, denoising, generators)
                for row, bits, repaired in zip(group, filled, repairs.tolist(), strict=True):
                    row.take(bits, repaired)
    return [row.sample() for row in rows]


def _check_diffusion(
    model: TransformerLM, max_new_bytes: int, options: list[GenerationOptions]
) -> None:
    """Refuse a causal model and an infilling that does not fit the window."""
    if model.config.mode != "diffusion":
        raise BitLMError(
            "diffusion sampling needs a model trained with model.mode=diffusion "
            "(bitlm-train experiment=diffusion); this one is causal"
        )
    for o in options:
        window = _window_bytes(model, o.suffix)
        if o.suffix and max_new_bytes + len(o.suffix) > window:
            raise BitLMError(
                f"infilling writes the middle and the suffix in one window of {window} bytes: "
                f"{max_new_bytes} new + {len(o.suffix)} suffix bytes do not fit; shorten them"
            )


def _window_bytes(model: TransformerLM, suffix: bytes) -> int:
    """The bytes a window holds: a frame model never reads the last frame of its window
    (model/hierarchical.py), so a suffix is followed by one unread frame that all of it is
    seen."""
    return model.config.max_bytes - (1 if suffix and model.config.diffusion_unit == "frame" else 0)


class _Row:
    """One prompt of ``diffusion_generate_many``: its text so far, its generator, the frames it
    made and the parity repairs they took."""

    def __init__(self, model: TransformerLM, prompt: bytes, options: GenerationOptions) -> None:
        device = model.head.weight.device
        self.options, self.generator = options, options.generator(device)
        self.window_bytes = _window_bytes(model, options.suffix)
        pad = (model.config.max_bytes - self.window_bytes) * FRAME_BITS
        unread = torch.zeros(pad, device=device, dtype=torch.long)
        self.tail = torch.cat((bytes_to_bits(options.suffix).to(device).long(), unread))
        self.text = bytes_to_bits(prompt).to(device)
        self.made, self.frames, self.repairs = 0, [], 0

    def remaining(self, max_new_bytes: int) -> int:
        return max_new_bytes - self.made

    def plan(self, max_new_bytes: int) -> tuple[int, int, int, GenerationOptions]:
        """``(context bytes, new bytes, suffix bits, denoising options)`` of the next window:
        rows with the same plan are denoised together (the options without what only this row
        reads)."""
        keep, block = _window_plan(
            len(self.text) // FRAME_BITS,
            self.remaining(max_new_bytes),
            len(self.options.suffix),
            self.window_bytes,
        )
        shared = replace(self.options, seed=0, deadline=None, stop=None, suffix=b"")
        return keep, block, len(self.tail), shared

    def window(self, max_new_bytes: int) -> Tensor:
        """The next window's symbols: context, the masked block, the suffix."""
        keep, block, _, _ = self.plan(max_new_bytes)
        context = self.text[len(self.text) - keep * FRAME_BITS :].long()
        gap = torch.full((block * FRAME_BITS,), MASK, device=context.device, dtype=torch.long)
        self.span = (len(context), len(context) + len(gap))
        return torch.cat((context, gap, self.tail))

    def take(self, filled: Tensor, repairs: int) -> None:
        """Keep the new frames of a denoised window whose parity repair changed ``repairs``
        frames."""
        new = filled[self.span[0] : self.span[1]].to(torch.uint8)
        self.frames.append(new)
        self.text = torch.cat((self.text, new))
        self.made += len(new) // FRAME_BITS
        self.repairs += repairs

    def sample(self) -> Sample:
        bits = torch.cat(self.frames).cpu() if self.frames else torch.zeros(0, dtype=torch.uint8)
        return Sample(bits, self.repairs)


def _window_plan(
    text_bytes: int, remaining: int, suffix_bytes: int, window: int
) -> tuple[int, int]:
    """``(context bytes kept, bytes generated)`` for the next window: with a suffix all that
    remains at once (it was checked to fit); otherwise as much as fits beside up to half a window
    of the text so far."""
    half_context = min(text_bytes, window // 2)
    block = remaining if suffix_bytes else min(remaining, window - half_context)
    return min(text_bytes, window - block - suffix_bytes), block
