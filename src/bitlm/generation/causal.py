"""Autoregressive sampling of many sequences at once, key/value-cached, parity-aware so that
output always decodes.

Each new byte is 8 data bits, which are drawn (``generation/draws.py``), and one parity bit,
which is *computed* (XOR of the 8 data bits) and never sampled: every emitted frame has even
parity by construction, whatever the model believes.

A ``CausalBatch`` is a running batch. A sequence joins with ``add`` (its prompt is prefilled
alone, so its cache holds what decoding it alone would), each ``step`` samples one byte for
every sequence, and a sequence leaves as soon as it reaches its stop string, its byte budget or
its deadline; the others go on. Rows hold contexts of different lengths: their caches write and
mask each row at its own position (``KVCache``) and the rotary tables are per row. Each row
draws from its own generator (``RowRandom``), so a sequence's text does not depend on the
sequences decoded beside it. ``generate_many`` and ``generate_bits`` run a batch to its end.

Per byte, the flat trunk runs 9 single-position passes of its stack (8 drawn bits, the parity
bit fed); the hierarchical trunk one pass of its global stack, after which the tree decoder
draws the whole byte from its 255 node logits in one step and the transformer decoder runs its
in-frame stack once per data bit.

Window: when a row's cache is full, its oldest whole frames are dropped until half the window is
left and the rest is re-encoded behind a fresh START symbol, exactly as the training windows
look. ``kv_cache=False`` re-encodes a row's whole window at every step (the slow reference the
cache is benchmarked against): the same windows, so the same text up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bitlm.core.bits import DATA_BITS, FRAME_BITS, FRAME_TABLE, bytes_to_bits
from bitlm.core.errors import TimeLimitExceeded, check_deadline
from bitlm.generation.draws import (
    RowRandom,
    bit_distribution,
    byte_distribution,
    draw_bits,
    draw_bytes,
)
from bitlm.generation.options import GenerationOptions, per_prompt
from bitlm.model import BitModel
from bitlm.model.attention import KVCache
from bitlm.model.hierarchical import HierarchicalBitLM, TreeDecoder
from bitlm.model.transformer import MASK, evaluating


class _Rows:
    """The trunk's side of a running batch: per row the window of symbols the trunk has read
    (START excluded), the rows' caches, and the trunk's last output per row (what the next
    symbol is drawn from). Subclasses say what a symbol is (``frame``: symbols per frame)."""

    frame = 1

    def __init__(self, model: BitModel, kv_cache: bool) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = model.head.weight.device
        self.capacity = model.config.trunk_positions
        self.windows: list[list[int]] = []
        self.caches: list[KVCache] = []
        self.state: Tensor | None = None  # (B, …)

    def add(self, window: list[int]) -> None:
        """A new row reading ``window`` (its last whole frames that fit)."""
        window = self._trim(window)
        caches, state = self._prefill(window)
        self.windows.append(window)
        if self.state is None:
            self.caches, self.state = caches, state
            return
        for mine, theirs in zip(self.caches, caches, strict=True):
            mine.extend(theirs)
        self.state = torch.cat((self.state, state))

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order)."""
        self.windows = [self.windows[r] for r in rows]
        if not rows:
            self.caches, self.state = [], None
            return
        for cache in self.caches:
            cache.keep(rows)
        self.state = self.state[torch.tensor(rows, device=self.device)]

    def step(self, symbols: Tensor) -> None:
        """Feed one symbol (B,) per row; ``state`` becomes the output for the symbol after."""
        for window, symbol in zip(self.windows, symbols.tolist(), strict=True):
            window.append(symbol)
        for row, length in enumerate(self.caches[0].lengths):
            if not self.kv_cache or length >= self.capacity:
                self._refill(row)
        start = torch.tensor(self.caches[0].lengths, device=self.device)
        self.state = self._run(self._step_input(symbols), start, self.caches)

    def _refill(self, row: int) -> None:
        """Re-encode row ``row``'s trimmed window but for its newest symbol (which ``step`` then
        feeds like every other row's)."""
        self.windows[row] = self._trim(self.windows[row])
        caches, _ = self._prefill(self.windows[row][:-1])
        for mine, fresh in zip(self.caches, caches, strict=True):
            mine.put(row, fresh)

    def _prefill(self, window: list[int]) -> tuple[list[KVCache], Tensor]:
        caches = self.model.new_caches(1)
        return caches, self._run(self._window_input(window), 0, caches)

    def _trim(self, window: list[int]) -> list[int]:
        """``window`` if START and it fit the cache, else its last whole frames, at most half
        the cache of them."""
        if len(window) < self.capacity:
            return window
        excess = len(window) - self.capacity // 2
        return window[-(-excess // self.frame) * self.frame :]


class _BitRows(_Rows):
    """Flat trunk: a symbol is a bit; ``state`` is the logits (B, 2) of the next bit."""

    frame = FRAME_BITS
    draws = DATA_BITS

    def _window_input(self, window: list[int]) -> Tensor:
        return torch.tensor([[MASK, *window]], device=self.device)

    def _step_input(self, symbols: Tensor) -> Tensor:
        return symbols[:, None].long()

    def _run(self, x: Tensor, start: int | Tensor, caches: list[KVCache]) -> Tensor:
        return self.model.predict(x, start=start, caches=caches)[:, -1]

    def sample(self, temperature: Tensor, top_p: Tensor, uniforms: Tensor) -> Tensor:
        """A byte (B,) per row, its 8 data bits fed as they are drawn."""
        value = torch.zeros(len(self.windows), dtype=torch.long, device=self.device)
        for j in range(DATA_BITS):
            bit = draw_bits(bit_distribution(self.state, temperature, top_p), uniforms[:, j])
            self.step(bit)
            value = 2 * value + bit
        return value

    def finish(self, values: Tensor) -> None:
        """Feed each row's computed parity bit."""
        self.step(FRAME_TABLE.to(self.device)[values, DATA_BITS].long())


class _FrameRows(_Rows):
    """Hierarchical trunk: a symbol is a byte (its frame); ``state`` is the global head's
    output (B, context_size) for the next frame. ``whole_frame`` (default: for the tree
    decoder) draws the byte from its 256-way distribution at once, else bit by bit through the
    in-frame decoder (the same distribution; a test compares them). Only the tree decoder's
    node logits define the byte's distribution at once."""

    def __init__(self, model: HierarchicalBitLM, kv_cache: bool, whole_frame: bool | None) -> None:
        super().__init__(model, kv_cache)
        tree = isinstance(model.local, TreeDecoder)
        if whole_frame and not tree:
            raise ValueError("whole-frame draws need model.local_decoder=tree")
        self.whole_frame = tree if whole_frame is None else whole_frame
        self.draws = 1 if self.whole_frame else DATA_BITS
        self.table = FRAME_TABLE.to(self.device).long()

    def _window_input(self, window: list[int]) -> Tensor:
        start = torch.full((1, FRAME_BITS), MASK, device=self.device)
        return torch.cat((start, self.table[window]))[None]

    def _step_input(self, symbols: Tensor) -> Tensor:
        return self.table[symbols][:, None]

    def _run(self, x: Tensor, start: int | Tensor, caches: list[KVCache]) -> Tensor:
        return self.model.frame_contexts(x, start=start, caches=caches)[:, -1]

    def sample(self, temperature: Tensor, top_p: Tensor, uniforms: Tensor) -> Tensor:
        """A byte (B,) per row."""
        if self.whole_frame:
            return draw_bytes(byte_distribution(self.state, temperature, top_p), uniforms[:, 0])
        symbols = torch.full((len(self.windows), 1), MASK, device=self.device)
        for j in range(DATA_BITS):
            logits = self.model.local(self.state, symbols)[:, -1]
            bit = draw_bits(bit_distribution(logits, temperature, top_p), uniforms[:, j])
            symbols = torch.cat((symbols, bit[:, None]), dim=1)
        weights = 2 ** torch.arange(DATA_BITS - 1, -1, -1, device=self.device)
        return (symbols[:, 1:] * weights).sum(-1)

    def finish(self, values: Tensor) -> None:
        """Feed each row's frame to the global trunk."""
        self.step(values)


@dataclass(eq=False)
class Continuation:
    """One prompt being continued in a ``CausalBatch``: what it asked for and what it made."""

    options: GenerationOptions
    budget: int  # bytes it may still add
    random: RowRandom
    output: bytearray = field(default_factory=bytearray)
    error: Exception | None = None
    done: bool = False
    stopped: bool = False  # ended by its stop string (not its budget)

    def accept(self, value: int) -> bool:
        """Append a sampled byte; whether the continuation is finished (its stop string, whose
        bytes are then dropped, or its budget)."""
        self.output.append(value)
        self.budget -= 1
        stop = self.options.stop
        if stop and self.output.endswith(stop):
            del self.output[len(self.output) - len(stop) :]
            self.done = self.stopped = True
        self.done = self.done or self.budget <= 0
        return self.done

    def settled(self) -> bytes:
        """The output that no later byte can take back: all of it once done, else all but the
        longest tail that could still grow into the stop string (what a stream may send)."""
        stop = self.options.stop
        if self.done or not stop:
            return bytes(self.output)
        for held in range(min(len(stop) - 1, len(self.output)), 0, -1):
            if self.output.endswith(stop[:held]):
                return bytes(self.output[:-held])
        return bytes(self.output)

    def bits(self) -> Tensor:
        """The output as frames (9n,) uint8."""
        return bytes_to_bits(bytes(self.output))


class CausalBatch:
    """A running batch of continuations of one causal bit model (module docstring). The model
    is used as it is: callers put it in eval mode (``generate_many`` does)."""

    def __init__(
        self, model: BitModel, *, kv_cache: bool = True, whole_frame: bool | None = None
    ) -> None:
        if isinstance(model, HierarchicalBitLM):
            self.rows: _BitRows | _FrameRows = _FrameRows(model, kv_cache, whole_frame)
        else:
            self.rows = _BitRows(model, kv_cache)
        self.running: list[Continuation] = []

    def __len__(self) -> int:
        return len(self.running)

    @torch.no_grad()
    def add(self, prompt: bytes, max_new_bytes: int, options: GenerationOptions) -> Continuation:
        """Start continuing ``prompt`` by up to ``max_new_bytes`` bytes (0: done at once)."""
        continuation = Continuation(options, max_new_bytes, RowRandom(options.seed))
        if max_new_bytes <= 0:
            continuation.done = True
            return continuation
        window = list(prompt)
        if isinstance(self.rows, _BitRows):
            window = bytes_to_bits(prompt).tolist()
        self.rows.add(window)
        self.running.append(continuation)
        return continuation

    @torch.no_grad()
    def step(self) -> list[Continuation]:
        """One byte for every running continuation; returns those that finished (or ran past
        their deadline: ``error`` is then ``TimeLimitExceeded``), which leave the batch."""
        for c in self.running:
            try:
                check_deadline(c.options.deadline)
            except TimeLimitExceeded as err:
                c.error, c.done = err, True
        expired = self._leave()
        if not self.running:
            return expired
        device = self.rows.device
        temperature = torch.tensor([c.options.temperature for c in self.running], device=device)
        top_p = torch.tensor([c.options.top_p for c in self.running], device=device)
        uniforms = torch.stack([c.random.take(self.rows.draws) for c in self.running])
        values = self.rows.sample(temperature, top_p, uniforms)
        for c, value in zip(self.running, values.tolist(), strict=True):
            c.accept(value)
        still = [i for i, c in enumerate(self.running) if not c.done]
        finished = self._leave()
        if self.running:
            self.rows.finish(values[torch.tensor(still, device=device)])
        return expired + finished

    def _leave(self) -> list[Continuation]:
        """Drop the finished continuations from the batch; return them."""
        gone = [c for c in self.running if c.done]
        if gone:
            kept = [i for i, c in enumerate(self.running) if not c.done]
            self.rows.keep(kept)
            self.running = [self.running[i] for i in kept]
        return gone


@torch.no_grad()
def generate_many(
    model: BitModel,
    prompts: Sequence[bytes],
    max_new_bytes: int,
    options: GenerationOptions | Sequence[GenerationOptions] | None = None,
) -> list[Tensor]:
    """Continue every prompt by up to ``max_new_bytes`` frames, decoded together; returns the
    new bits (9·n,) uint8 of each. ``options``: one for all prompts or one per prompt; each
    continuation is what ``generate_bits`` gives that prompt with its options (greedy: the same
    bytes; sampled: the same draws, from its own seed). Raises the first continuation's
    ``TimeLimitExceeded`` when one ran past its deadline."""
    options = per_prompt(options, prompts)
    kv_cache = all(o.kv_cache for o in options)
    with evaluating(model):
        batch = CausalBatch(model, kv_cache=kv_cache)
        pairs = zip(prompts, options, strict=True)
        continuations = [batch.add(prompt, max_new_bytes, o) for prompt, o in pairs]
        while batch:
            batch.step()
    for c in continuations:
        if c.error is not None:
            raise c.error
    return [c.bits() for c in continuations]


def generate_bits(
    model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions | None = None
) -> Tensor:
    """Continue ``prompt`` by up to ``max_new_bytes`` frames; returns the new bits (9·n,) uint8.

    Stops early once the output ends with ``options.stop`` (whose frames are then dropped). An
    empty prompt starts from the START symbol alone. ``kv_cache=False`` re-encodes the whole
    window for every bit (slow; the reference for ``bitlm-bench generate``). The ``deadline``
    is checked once per byte."""
    return generate_many(model, [prompt], max_new_bytes, options)[0]
