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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from bitlm.core.bits import DATA_BITS, FRAME_BITS, bytes_to_bits
from bitlm.core.errors import BitLMError, check_deadline
from bitlm.generation.options import GenerationOptions
from bitlm.model.hierarchical import hide
from bitlm.model.noise import corruption_rate
from bitlm.model.transformer import MASK, TransformerLM, evaluating, shift_right


class Sample(NamedTuple):
    """A sampled continuation: bits (9n,) uint8 that always decode, and how many frames the
    parity repair had to change (always 0 for causal sampling, which computes parity bits)."""

    bits: Tensor
    parity_repairs: int


def repair_parity(bits: Tensor, confidence: Tensor) -> tuple[Tensor, int]:
    """Make every frame of bits (B, 9n) even: in each odd frame flip its bit of lowest
    ``confidence`` (B, 9n) (the probability with which it was drawn; +inf for given bits).
    Returns the repaired bits and the number of frames changed."""
    frames = bits.view(bits.size(0), -1, FRAME_BITS)
    odd = frames.sum(-1) % 2 == 1  # (B, n)
    weakest = confidence.view_as(frames).argmin(-1, keepdim=True)  # (B, n, 1)
    flip = torch.zeros_like(frames, dtype=torch.bool).scatter_(-1, weakest, odd[..., None])
    return (frames ^ flip.to(frames.dtype)).view_as(bits), int(odd.sum())


@torch.no_grad()
def denoise(
    model: TransformerLM,
    symbols: Tensor,
    options: GenerationOptions,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Fill the MASK positions of symbols (B, L) in ``options.diffusion_steps`` model passes
    (module docstring; ``options.schedule`` defaults to the model's ``noise_schedule``);
    returns the bits (B, L) long, parity-repaired, and the number of frames repaired. Frames
    must be either wholly given or wholly masked. ``options.deadline``: ``check_deadline``
    before each pass. The draws come from ``generator`` (None: torch's global one), which a
    caller denoising window after window keeps from one window to the next."""
    if model.config.diffusion_unit == "frame":
        return _denoise_frames(model, symbols, options, generator), 0
    return _denoise_bits(model, symbols, options, generator)


def _denoise_bits(
    model: TransformerLM,
    symbols: Tensor,
    options: GenerationOptions,
    generator: torch.Generator | None,
) -> tuple[Tensor, int]:
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
        if temperature == 0:
            draws = p_one > 0.5
        else:
            draws = torch.rand(x.shape, generator=generator, device=x.device) < p_one
        p_draw = torch.where(draws, p_one, 1 - p_one)
        still_masked = (corruption_rate(schedule, (k - 1) / steps) * n_free).floor().long()
        # lowest score = stays (or becomes) masked; given bits, and without remask filled
        # ones, never compete
        score = p_draw
        if remask:
            score = torch.where(masked, p_draw, torch.where(x == 1, p_one, 1 - p_one))
        score = score.clamp_min(1e-12).log()
        if choice_temperature > 0:
            score = score + choice_temperature * k / steps * _gumbel(x.shape, generator, x.device)
        if not remask:
            score = score.masked_fill(~masked, math.inf)
        score = score.masked_fill(~free, math.inf)
        now_masked = _lowest(score, still_masked) & free
        revealed = masked & ~now_masked
        x = torch.where(revealed, draws.long(), x).masked_fill(now_masked, MASK)
        confidence = torch.where(revealed, p_draw, confidence)
        masked = now_masked
    return repair_parity(x, confidence)


def _denoise_frames(
    model: TransformerLM,
    symbols: Tensor,
    options: GenerationOptions,
    generator: torch.Generator | None,
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
        drawn, log_p = _draw_frames(model, frames, masked, options.temperature, generator)
        still_masked = (corruption_rate(schedule, (k - 1) / steps) * n_free).floor().long()
        score = torch.where(masked, log_p, drawn_with if options.remask else math.inf)
        if options.choice_temperature > 0:
            noise = _gumbel(free.shape, generator, frames.device)
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
    model: TransformerLM, frames: Tensor, hidden: Tensor, temperature: float, generator
) -> tuple[Tensor, Tensor]:
    """A frame drawn for each ``hidden`` position of frames (B, n, 9) with those unseen, its 8
    data bits one after another through the in-frame decoder at ``temperature`` (0: each bit's
    argmax) and its parity computed; returns frames with the drawn ones in place and the
    log-probability (B, n) each was drawn with (0 where nothing was drawn)."""
    contexts = model.frame_contexts(shift_right(hide(frames, hidden)), causal=False)
    contexts = contexts[hidden]  # (N, context_size): only the frames being drawn
    symbols = torch.full((contexts.size(0), 1), MASK, device=frames.device)
    log_p = torch.zeros(contexts.size(0), device=frames.device)
    for j in range(DATA_BITS):
        p_one = _bit_probability(model.local(contexts, symbols)[:, j], temperature)
        if temperature == 0:
            bit = p_one > 0.5
        else:
            bit = torch.rand(p_one.shape, generator=generator, device=p_one.device) < p_one
        log_p += torch.where(bit, p_one, 1 - p_one).clamp_min(1e-12).log()
        symbols = torch.cat((symbols, bit.long()[:, None]), dim=1)
    data = symbols[:, 1:]
    drawn, all_log_p = frames.clone(), torch.zeros(frames.shape[:2], device=frames.device)
    drawn[hidden] = torch.cat((data, data.sum(-1, keepdim=True) % 2), dim=1)
    all_log_p[hidden] = log_p
    return drawn, all_log_p


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise −log(−log U)."""
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-12, 1 - 1e-7)
    return -(-u.log()).log()


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
    options = options or GenerationOptions()
    config, suffix = model.config, options.suffix
    if config.mode != "diffusion":
        raise BitLMError(
            "diffusion sampling needs a model trained with model.mode=diffusion "
            "(bitlm-train experiment=diffusion); this one is causal"
        )
    # a frame model never reads the last frame of its window (model/hierarchical.py): a suffix
    # is followed by one unread frame so that all of it is seen
    pad = FRAME_BITS if suffix and config.diffusion_unit == "frame" else 0
    window = config.max_bytes - pad // FRAME_BITS
    if suffix and max_new_bytes + len(suffix) > window:
        raise BitLMError(
            f"infilling writes the middle and the suffix in one window of {window} bytes: "
            f"{max_new_bytes} new + {len(suffix)} suffix bytes do not fit; shorten them"
        )
    device = model.head.weight.device
    generator = options.generator(device)
    text, frames, repairs = bytes_to_bits(prompt).to(device), [], 0
    unread = torch.zeros(pad, device=device, dtype=torch.long)
    tail = torch.cat((bytes_to_bits(suffix).to(device).long(), unread))
    with evaluating(model):
        remaining = max_new_bytes
        while remaining > 0:
            keep, block = _window_plan(len(text) // FRAME_BITS, remaining, len(suffix), window)
            context = text[len(text) - keep * FRAME_BITS :].long()
            gap = torch.full((block * FRAME_BITS,), MASK, device=device, dtype=torch.long)
            symbols = torch.cat((context, gap, tail))[None]
            filled, n = denoise(model, symbols, options, generator)
            new = filled[0, len(context) : len(context) + len(gap)].to(torch.uint8)
            frames.append(new)
            text, repairs, remaining = torch.cat((text, new)), repairs + n, remaining - block
    bits = torch.cat(frames).cpu() if frames else torch.zeros(0, dtype=torch.uint8)
    return Sample(bits, repairs)


def _window_plan(
    text_bytes: int, remaining: int, suffix_bytes: int, window: int
) -> tuple[int, int]:
    """``(context bytes kept, bytes generated)`` for the next window: with a suffix all that
    remains at once (it was checked to fit); otherwise as much as fits beside up to half a window
    of the text so far."""
    half_context = min(text_bytes, window // 2)
    block = remaining if suffix_bytes else min(remaining, window - half_context)
    return min(text_bytes, window - block - suffix_bytes), block
