"""HierarchicalBitLM: bit-native input, output and loss at byte-level cost (``trunk=hierarchical``).

The flat model runs its whole stack at nine positions per byte. This trunk runs the main stack
once per frame and predicts the bits of each frame with a decoder inside the frame (the idea of
MEGABYTE's patch models, with a patch of one 9-bit frame)::

    bits (B, 9n) → frames (B, n, 9) of symbols 0 / 1 / MASK
      → frame embedding  e_i = Σ_k E[k, s_ik]                 k = position in the frame, 0 … 8
                         (frame_embedding=bits; "byte": E_byte[byte_i]; "both": the sum)
      → global trunk     causal over frames, inputs [START, e_0 … e_{n-2}] (reversible or plain)
      → LayerNorm → Linear(d_model, context_size)   c_i: everything known before frame i
      → in-frame decoder bit j of frame i from c_i and b_0 … b_{j-1}; all frames in parallel
           tree          (default) c_i holds two logits for each of the 255 prefixes; bit j
                         reads those of its prefix (a hierarchical softmax over the bit tree);
                         tree_head=prefix shares the head's rows across nodes (PrefixTreeHead)
           transformer   a causal stack of ``local_*`` size over the 8 data-bit positions,
                         inputs c_ij + E_bit[s_j] + E_pos[j] with s = [START, b_0 … b_6]
      → parity           computed, never predicted: logits ±PARITY_LOGIT for b_0 ⊕ … ⊕ b_7
    logits (B, 9n, 2)    the flat model's layout: same loss, bpb, telemetry and decoding

Every frame sees only earlier frames through the global stack and only its own earlier bits
through the in-frame decoder, so ``logits[:, t]`` depends on ``bits[:, :t]`` alone, as for the
flat model.

Cost per byte: one position of the main stack (the flat model pays nine) plus, for the tree, a
projection to 510 logits (what a 256-way softmax costs); the transformer decoder adds eight
positions of a stack ``local_d_model`` wide. ``experiments/hierarchical`` measures both.

Diffusion mode (``mode=diffusion``) drops the causal mask of the global trunk, in one of two
ways (``diffusion_unit``):

* ``frame`` (``experiment=diffusion``): the noise hides whole frames, and the model is the causal
  one with bidirectional attention. The trunk reads [START, z_0 … z_{n-2}] (hidden frames as
  all-MASK frames) exactly as the causal trunk reads its shifted input, so output i again
  conditions frame i and the in-frame decoder scores the frame's bits one after another: a hidden
  byte's likelihood is exact, and a trained causal model is a starting point with every weight in
  place (``mode`` may change by ``grow_to``). The last frame of a window is predicted, never read.
* ``bit``: the noise hides single bits; the trunk reads the noisy frames unshifted (MASK symbols
  embed like any other) and a head of two logits for each of the frame's 9 bits predicts every
  bit on its own, as the flat trunk's bidirectional path does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitlm.core.bits import DATA_BITS, FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.model.attention import KVCache, RotaryEmbedding
from bitlm.model.blocks import PlainStack
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import MASK, TransformerLM, init_weights, shift_right

PARITY_LOGIT = 20.0
"""Half the logit gap of a computed parity bit: p(parity = b_0 ⊕ … ⊕ b_7) = σ(40) ≈ 1 − 4e-18,
so its cross-entropy is 0 in float32 and sampling it always gives even parity."""

SYMBOLS = 3  # 0, 1, MASK
TREE_NODES = 2**DATA_BITS - 1
"""Internal nodes of the binary tree over a frame's 8 data bits: one per prefix b_0 … b_{j-1}."""
BYTE_ROWS = 2**DATA_BITS + 1  # frame_embedding=byte: 256 byte values and a masked frame


class TreeDecoder(nn.Module):
    """``local_decoder=tree``: one binary decision per node of the tree over the data bits.

    The node reached by the prefix b_0 … b_{j-1} predicts bit j; in heap order the root is node 0
    and ``node_j = 2·node_{j-1} + 1 + b_{j-1}``. The global head emits the two logits of all 255
    nodes for each frame, and the decoder picks the 8 on the frame's path::

        logits_j = context[node_j]          p(frame) = Π_j softmax(logits_j)[b_j]

    It has no weights of its own and costs one gather per bit, so a frame costs what a 256-way
    softmax costs; the factorisation is the hierarchical softmax over the bit tree.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()  # nothing to build: the config only sets the global head's width

    @staticmethod
    def context_size(config: ModelConfig) -> int:
        return 2 * TREE_NODES

    def forward(self, context: Tensor, symbols: Tensor) -> Tensor:
        """Logits (N, T, 2) for the first T ≤ 8 data bits of N frames from their node logits
        (N, 510) and input symbols (N, T) = [MASK, b_0 … b_{T-2}]."""
        nodes = torch.zeros_like(symbols)
        for j in range(1, symbols.size(1)):
            nodes[:, j] = 2 * nodes[:, j - 1] + 1 + symbols[:, j]
        node_logits = context.view(context.size(0), TREE_NODES, 2)
        return node_logits.gather(1, nodes[..., None].expand(-1, -1, 2))


class TransformerDecoder(nn.Module):
    """``local_decoder=transformer``: a causal transformer of ``local_*`` size over the 8
    data-bit positions of each frame. The global head gives each position its own view of the
    frame's context (MEGABYTE's per-position projection), added to the input embeddings::

        x_j = context_j + E_bit[s_j] + E_pos[j]     s = [MASK, b_0 … b_6]
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        local = config.local_config()
        self.bit_embedding = nn.Embedding(SYMBOLS, local.d_model)
        self.position_embedding = nn.Embedding(DATA_BITS, local.d_model)
        self.rope = RotaryEmbedding(local.head_dim, local.rope_base)
        self.stack = PlainStack(local)
        self.norm = nn.LayerNorm(local.d_model, bias=local.bias)
        self.head = nn.Linear(local.d_model, 2, bias=local.bias)
        init_weights(self, local.n_layers)

    @staticmethod
    def context_size(config: ModelConfig) -> int:
        return DATA_BITS * config.local_d_model

    def forward(self, context: Tensor, symbols: Tensor) -> Tensor:
        """Logits (N, T, 2) for the first T ≤ 8 data bits of N frames from their contexts
        (N, 8 · local_d_model) and input symbols (N, T) = [MASK, b_0 … b_{T-2}]."""
        N, T = symbols.shape
        positions = torch.arange(T, device=symbols.device)
        x = context.view(N, DATA_BITS, -1)[:, :T]
        x = x + self.bit_embedding(symbols) + self.position_embedding(positions)
        return self.head(self.norm(self.stack(x, self.rope(0, T), causal=True)))


class PrefixTreeHead(nn.Module):
    """``tree_head=prefix``: the global head of the tree decoder with weights shared across
    nodes. The two logit rows of node n at depth j with prefix b_0 … b_{j-1} are::

        W[n] = R[n] + D[j] + Σ_{i<j} P[j, i, b_i]        logits_n = W[n] · h (+ bias)

    D: a term per depth, P: a term per (depth, earlier position, bit value), R: a free residual
    per node (zero at initialisation). With R alone it is the free head (same function class);
    the shared terms let every node learn from the frames that pass through nodes differing
    from it in a few prefix bits: rarely visited nodes (most of the 255) inherit what frequent
    ones learnt, e.g. a letter's lower bits are predicted alike whatever its case bit. ``A``
    (255·2 × terms, fixed 0/1) selects each node's terms, so ``W = R + A · S`` costs one small
    matrix product per forward.
    """

    def __init__(self, d_model: int, bias: bool) -> None:
        super().__init__()
        incidence = prefix_incidence()
        self.weight = nn.Parameter(torch.zeros(2 * TREE_NODES, d_model))  # R
        self.shared = nn.Parameter(torch.randn(incidence.size(1), d_model) * 0.02 / DATA_BITS**0.5)
        self.bias = nn.Parameter(torch.zeros(2 * TREE_NODES)) if bias else None
        self.register_buffer("incidence", incidence, persistent=False)
        self._cached: tuple[tuple[int, ...], Tensor] | None = None  # composed_weight, no grad

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.composed_weight(), self.bias)

    def composed_weight(self) -> Tensor:
        """``R + A · S``. Without gradients (sampling, evaluation) it is kept until a parameter
        changes (their in-place version counters): decoding one frame at a time would otherwise
        rebuild the 510 × d_model matrix at every step, three times the trunk's work at batch 1."""
        if torch.is_grad_enabled():
            return self._compose()
        key = (
            self.weight._version,
            self.shared._version,
            self.weight.data_ptr(),
            self.shared.data_ptr(),
        )
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._compose())
        return self._cached[1]

    def _compose(self) -> Tensor:
        return self.weight + self.incidence.to(self.shared.dtype) @ self.shared


def prefix_incidence() -> Tensor:
    """``A`` of ``PrefixTreeHead``: row 2n + o (node n in heap order, output o) has a 1 at the
    term of its depth D[j, o] and at P[j, i, b_i, o] for each bit b_i of its prefix."""
    depth_terms = 2 * DATA_BITS
    prefix_terms = [(j, i, v) for j in range(DATA_BITS) for i in range(j) for v in (0, 1)]
    index = {term: depth_terms + 2 * k for k, term in enumerate(prefix_terms)}
    incidence = torch.zeros(2 * TREE_NODES, depth_terms + 2 * len(prefix_terms))
    for node in range(TREE_NODES):
        depth = (node + 1).bit_length() - 1  # heap order: 2^j − 1 … 2^(j+1) − 2 at depth j
        path = node + 1 - 2**depth  # the prefix b_0 … b_{j-1} as a j-bit number
        for o in (0, 1):
            incidence[2 * node + o, 2 * depth + o] = 1
            for i in range(depth):
                bit = path >> (depth - 1 - i) & 1
                incidence[2 * node + o, index[depth, i, bit] + o] = 1
    return incidence


LOCAL_DECODERS = {"tree": TreeDecoder, "transformer": TransformerDecoder}


class HierarchicalBitLM(TransformerLM):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.frame_embedding != "byte":  # one table for (position, symbol): index 3·k + s
            self.frame_embedding = nn.Embedding(FRAME_BITS * SYMBOLS, config.d_model)
        if config.frame_embedding != "bits":  # a row per byte value, and one for a masked frame
            self.byte_embedding = nn.Embedding(BYTE_ROWS, config.d_model)
        if config.mode == "diffusion" and config.diffusion_unit == "bit":  # 9 × 2 logits
            self._build_trunk_and_head(config, n_outputs=2 * FRAME_BITS)
            self.local = None
        else:
            decoder = LOCAL_DECODERS[config.local_decoder]
            self._build_trunk_and_head(config, n_outputs=decoder.context_size(config))
            # built after the trunk's initialisation: a decoder initialises itself for its depth
            self.local = decoder(config)
            if config.tree_head == "prefix":
                self.head = PrefixTreeHead(config.d_model, config.bias)
        offsets = SYMBOLS * torch.arange(FRAME_BITS)
        self.register_buffer("symbol_offsets", offsets, persistent=False)

    def forward(
        self, bits: Tensor, *, causal: bool | None = None, hidden: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, L, 2) for bits (B, L), and a telemetry dict, exactly as
        ``BitTransformerLM.forward``: in causal mode ``logits[:, t]`` predicts bit t from
        ``bits[:, :t]``; in diffusion mode from the whole sequence, which may hold MASK symbols.
        Each model runs in the mode it was built for (the other has no head here).

        ``diffusion_unit=frame`` models take the clean bits and ``hidden`` (B, n) bool, the
        frames the trunk does not see: bit t of a hidden frame is predicted from the frames not
        hidden and the bits of its own frame before t."""
        B = bits.size(0)
        frames = bits.long().view(B, -1, FRAME_BITS)  # (B, n, 9)
        causal = self._own_mode(causal)
        frame_unit = self.config.diffusion_unit == "frame"
        if frame_unit != (hidden is not None) and not causal:
            raise BitLMError(
                "a diffusion_unit=frame model is given the clean bits and the hidden frames "
                "(hidden=…); a diffusion_unit=bit model the noisy bits alone"
            )
        if not causal and not frame_unit:
            logits = self.frame_contexts(frames, causal=False)  # (B, n, 18)
            return logits.view(B, -1, 2), self.trunk_telemetry()
        contexts = self.frame_contexts(shift_right(hide(frames, hidden)), causal=causal)
        data = frames[..., :DATA_BITS]  # (B, n, 8)
        symbols = shift_right(data.flatten(0, 1))  # (B·n, 8): [MASK, b_0 … b_6]
        data_logits = self.local(contexts.flatten(0, 1), symbols).view(*data.shape, 2)
        logits = torch.cat((data_logits, parity_logits(data).to(data_logits.dtype)), dim=2)
        return logits.flatten(1, 2), self.trunk_telemetry()  # (B, 9n, 2)

    def frame_contexts(
        self,
        frames: Tensor,
        start: int | Tensor = 0,
        caches: list[KVCache] | None = None,
        causal: bool = True,
    ) -> Tensor:
        """The global head's output (B, T, head width) for input frames (B, T, 9) of symbols at
        frame positions start … start+T-1 (per row for a (B,) tensor ``start``; the caches bound
        those positions). Causal: what the trunk tells the in-frame decoder, output t
        conditioning the frame after input t; bidirectional: the logits of each frame's own 9
        bits."""
        T = frames.size(1)
        if isinstance(start, int) and start + T > self.config.max_bytes:
            raise ValueError(f"{start + T} frames exceed the context of {self.config.max_bytes}")
        return self._trunk_and_head(self.embed_frames(frames), start, causal=causal, caches=caches)

    def embed_frames(self, frames: Tensor) -> Tensor:
        """The frame embeddings (B, T, d_model) of frames (B, T, 9) of symbols: the bit sum, the
        byte row, or both (``frame_embedding``)."""
        kind = self.config.frame_embedding
        if kind == "byte":
            return self.byte_embedding(byte_rows(frames))
        bits = self.embed_bits(frames)
        return bits if kind == "bits" else bits + self.byte_embedding(byte_rows(frames))

    def embed_bits(self, frames: Tensor) -> Tensor:
        """``e_i = Σ_k E[3·k + s_ik]``, as one ``embedding_bag`` sum over each frame's 9 rows:
        the same values as gathering the (B, T, 9, d_model) rows and summing them, without
        materialising that tensor forward or its gradient backward (9× the output's size)."""
        rows = (frames + self.symbol_offsets).flatten(0, 1)  # (B·T, 9)
        bags = F.embedding_bag(rows, self.frame_embedding.weight, mode="sum")
        return bags.unflatten(0, frames.shape[:2])


def hide(frames: Tensor, hidden: Tensor | None) -> Tensor:
    """frames (B, n, 9) with the ``hidden`` (B, n) ones (None: none) all MASK."""
    return frames if hidden is None else frames.masked_fill(hidden[..., None], MASK)


def byte_rows(frames: Tensor) -> Tensor:
    """Rows of the byte table for frames (…, 9) of symbols: the byte value of the 8 data bits
    (MSB first), or 256 for a frame holding a MASK (the start frame, diffusion's noise)."""
    data = frames[..., :DATA_BITS]
    weights = 2 ** torch.arange(DATA_BITS - 1, -1, -1, device=frames.device)
    values = (data * weights).sum(-1)
    return torch.where((frames == MASK).any(-1), BYTE_ROWS - 1, values)


def parity_logits(data: Tensor) -> Tensor:
    """Logits (…, 1, 2) of each frame's parity bit from its data bits (…, 8): ±PARITY_LOGIT,
    the sign picking even parity (bit = b_0 ⊕ … ⊕ b_7)."""
    odd = (data.sum(-1, keepdim=True) % 2).float()  # (…, 1)
    return torch.stack((1 - 2 * odd, 2 * odd - 1), dim=-1) * PARITY_LOGIT
