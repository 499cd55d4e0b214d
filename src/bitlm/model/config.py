"""Every hyper-parameter of a BitTransformerLM, in one validated dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bitlm.core.bits import FRAME_BITS, frames_in
from bitlm.core.errors import BitLMError

NOISE_SCHEDULES = ("linear", "cosine", "exp")
"""Names of the corruption-rate schedules of diffusion mode (``bitlm.model.noise.SCHEDULES``)."""
DIFFUSION_UNITS = ("bit", "frame")
"""What diffusion mode masks: single bits, or whole frames (``bitlm.model.noise``)."""
FRAME_EMBEDDINGS = ("bits", "byte", "both")
TREE_HEADS = ("free", "prefix")


@dataclass
class ModelConfig:
    """Architecture of a bit-native transformer.

    Sequence lengths are counted in bits: one byte is one 9-bit frame, so ``max_seq_len`` must be a
    multiple of 9 (``max_seq_len // 9`` bytes of context).
    """

    # what the model predicts: "bit" (BitTransformerLM: 2-way, 9 positions per byte) or "byte"
    # (ByteTransformerLM, the byte-level baseline: 256-way, one position per byte)
    unit: str = "bit"
    # how a bit model covers its frames: "flat" runs the stack over all 9 bit positions of every
    # byte; "hierarchical" runs it once per frame (byte rate) and predicts the frame's 8 data bits
    # with an in-frame decoder (model/hierarchical.py). configs/model/small.yaml picks
    # hierarchical; the default here stays flat so config.json files written before the
    # hierarchical trunk existed still load as the model they describe.
    trunk: str = "flat"
    # "causal": predict each bit from the bits before it (autoregressive); "diffusion": predict
    # masked bits from the whole noisy sequence (bidirectional denoising,
    # bitlm/objectives/denoising.py)
    mode: str = "causal"
    # diffusion mode: corruption rate γ(t) over noise time t ∈ [0, 1] used in training and, by
    # default, by the sampler: "linear" γ = t, "cosine" γ = 1 − cos(πt/2), "exp" γ = (1 − e^(−5t))
    # / (1 − e^(−5)) (bitlm.model.noise.SCHEDULES)
    noise_schedule: str = "linear"
    # diffusion mode: what the noise masks. "bit": every bit alone, each predicted on its own
    # (the flat trunk's and the first hierarchical diffusion models'); "frame" (trunk=hierarchical,
    # experiment=diffusion): whole frames, a masked frame's bits predicted by the in-frame
    # decoder one after another, so the model has the causal model's weights (and can start
    # from one) and scores a masked byte exactly instead of as 9 independent bits
    diffusion_unit: str = "bit"
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None  # None → 4 · d_model
    max_seq_len: int = 1152  # bits; 128 bytes
    dropout: float = 0.0
    # Two-stream reversible coupling (activations recomputed in backward, memory O(1) in depth);
    # False gives a standard pre-LayerNorm residual stack.
    reversible: bool = True
    # Recompute each block in backward (torch.utils.checkpoint); for reversible=False only.
    activation_checkpointing: bool = False
    # Process attention queries in chunks of this many positions (bounds the score matrix to
    # chunk × keys); None = all at once. The result is identical either way. Keep None where
    # SDPA has a fused causal kernel (CPU, CUDA): it never builds the score matrix, and chunks
    # after the first need an explicit mask that costs time and memory (experiments/microbench).
    attn_chunk_size: int | None = None
    rope_base: float = 10_000.0
    # RoPE position interpolation: rotation angles use position / rope_scale. 1 is plain RoPE;
    # a model extended from L to k·L bits of context may set k so the longer window's angles
    # stay within those it was trained on (Chen et al. 2023, experiments/progressive measures it)
    rope_scale: float = 1.0
    bias: bool = False
    # adaptive computation time (model/act.py): per-layer halting units; a position stops being
    # updated once its halting probabilities sum to act_threshold. With reversible=true the
    # coupling then runs under ordinary autograd (activations stored).
    use_act: bool = False
    act_threshold: float = 0.99
    # the in-frame bit decoder of trunk="hierarchical": "tree" (one binary decision per prefix,
    # logits from the global head) or "transformer" (a causal stack of local_* size over the
    # 8 data-bit positions)
    local_decoder: str = "tree"
    local_d_model: int = 64
    local_n_heads: int = 2
    local_n_layers: int = 1
    # trunk="hierarchical": how a frame enters the global stack. "bits": e = Σ_k E[k, s_k], a
    # row per (position in frame, symbol); "byte": a row per byte value (a frame holding a MASK
    # has its own row); "both": their sum (experiments/generalization)
    frame_embedding: str = "bits"
    # local_decoder="tree": the head's weights for the 255 nodes. "free": one independent row
    # pair per node; "prefix": each node's rows = a term for its depth + a term for each bit of
    # its prefix (shared by every node with that bit there) + a free residual
    tree_head: str = "free"
    # torch.compile the model for training (BitLMModule.configure_model, in place: parameter
    # names and checkpoints stay as without it); loading a model for inference ignores it
    compile: bool = False

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self._validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_bytes(self) -> int:
        """Context length in bytes (frames)."""
        return self.max_seq_len // FRAME_BITS

    @property
    def trunk_positions(self) -> int:
        """Positions the main stack attends over: one per bit for the flat bit model, one per
        frame for the hierarchical trunk and the byte-level baseline."""
        return self.max_seq_len if self.unit == "bit" and self.trunk == "flat" else self.max_bytes

    def local_config(self) -> ModelConfig:
        """The in-frame decoder's own config: a plain causal stack of ``local_*`` size over the 8
        data-bit positions of one frame (max_seq_len 9, the smallest valid window)."""
        return ModelConfig(
            d_model=self.local_d_model,
            n_heads=self.local_n_heads,
            n_layers=self.local_n_layers,
            max_seq_len=FRAME_BITS,
            dropout=self.dropout,
            reversible=False,
            rope_base=self.rope_base,
            bias=self.bias,
        )

    def _validate(self) -> None:
        self._validate_sizes()
        self._validate_choices()
        self._validate_settings()

    def _validate_sizes(self) -> None:
        """Positive widths and depths, heads dividing widths into even (rotary) head sizes,
        whole frames of context."""
        for name in (
            "d_model",
            "n_heads",
            "n_layers",
            "d_ff",
            "local_d_model",
            "local_n_heads",
            "local_n_layers",
        ):
            if not _is_positive_int(getattr(self, name)):
                raise BitLMError(
                    f"model.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        for prefix in ("", "local_"):
            width, heads = getattr(self, f"{prefix}d_model"), getattr(self, f"{prefix}n_heads")
            if width % heads:
                raise BitLMError(
                    f"model.{prefix}d_model ({width}) must be divisible by "
                    f"{prefix}n_heads ({heads})"
                )
            if width // heads % 2:
                raise BitLMError(
                    f"model.{prefix}d_model / {prefix}n_heads = {width // heads} must be even "
                    "for rotary embeddings"
                )
        frames_in(self.max_seq_len, "model.max_seq_len")

    def _validate_choices(self) -> None:
        """Named choices, and the combinations the byte-level baseline does not have."""
        if self.unit not in ("bit", "byte"):
            raise BitLMError(f"model.unit must be 'bit' or 'byte', got {self.unit!r}")
        if self.trunk not in ("flat", "hierarchical"):
            raise BitLMError(f"model.trunk must be 'flat' or 'hierarchical', got {self.trunk!r}")
        if self.local_decoder not in ("tree", "transformer"):
            raise BitLMError(
                f"model.local_decoder must be 'tree' or 'transformer', got {self.local_decoder!r}"
            )
        self._validate_frame_options()
        if self.mode not in ("causal", "diffusion"):
            raise BitLMError(f"model.mode must be 'causal' or 'diffusion', got {self.mode!r}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise BitLMError(
                f"model.noise_schedule must be one of {list(NOISE_SCHEDULES)}, "
                f"got {self.noise_schedule!r}"
            )
        self._validate_diffusion_unit()
        if self.unit == "byte" and self.mode != "causal":
            raise BitLMError(
                "model.mode=diffusion is for bit models; the byte-level baseline is the causal "
                "reference: set model.mode=causal"
            )
        if self.unit == "byte" and self.trunk != "flat":
            raise BitLMError(
                "model.trunk=hierarchical is a bit-model trunk; the byte-level baseline "
                "(model.unit=byte) already runs at one position per byte: use model.trunk=flat"
            )
        if self.unit == "byte" and self.use_act:
            raise BitLMError(
                "model.use_act (ACT halting) is for bit models; the byte-level baseline is the "
                "plain reference: set model.use_act=false"
            )

    def _validate_diffusion_unit(self) -> None:
        if self.diffusion_unit not in DIFFUSION_UNITS:
            raise BitLMError(
                f"model.diffusion_unit must be one of {list(DIFFUSION_UNITS)}, "
                f"got {self.diffusion_unit!r}"
            )
        if self.diffusion_unit == "frame" and (self.unit, self.trunk, self.mode) != (
            "bit",
            "hierarchical",
            "diffusion",
        ):
            raise BitLMError(
                "model.diffusion_unit=frame masks the frames of a hierarchical diffusion model: "
                "set model.trunk=hierarchical and model.mode=diffusion, or "
                "model.diffusion_unit=bit"
            )

    def _validate_frame_options(self) -> None:
        """``frame_embedding`` and ``tree_head``: named choices of the hierarchical trunk."""
        for name, choices, default in (
            ("frame_embedding", FRAME_EMBEDDINGS, "bits"),
            ("tree_head", TREE_HEADS, "free"),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise BitLMError(f"model.{name} must be one of {list(choices)}, got {value!r}")
            if value != default and (self.unit, self.trunk) != ("bit", "hierarchical"):
                raise BitLMError(
                    f"model.{name}={value} is an option of the hierarchical trunk: set "
                    f"model.trunk=hierarchical or leave model.{name}={default}"
                )
        bit_head = self.mode == "diffusion" and self.diffusion_unit == "bit"
        if self.tree_head != "free" and (self.local_decoder != "tree" or bit_head):
            raise BitLMError(
                "model.tree_head=prefix shapes the tree decoder's head: set "
                "model.local_decoder=tree (and, in diffusion mode, model.diffusion_unit=frame), "
                "or model.tree_head=free"
            )

    def _validate_settings(self) -> None:
        """Flags, rates and the numeric settings of attention, ACT and RoPE."""
        for name in ("reversible", "activation_checkpointing", "bias", "use_act", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise BitLMError(f"model.{name} must be true or false, got {getattr(self, name)!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise BitLMError(f"model.dropout must be in [0, 1), got {self.dropout}")
        chunk = self.attn_chunk_size
        if chunk is not None and not _is_positive_int(chunk):
            raise BitLMError(
                f"model.attn_chunk_size must be a positive integer or null, got {chunk!r}"
            )
        if self.reversible and self.activation_checkpointing:
            raise BitLMError(
                "model.activation_checkpointing applies to model.reversible=false only: the "
                "reversible stack already recomputes its activations in backward"
            )
        if not _is_number(self.act_threshold) or not 0.0 < self.act_threshold <= 1.0:
            raise BitLMError(f"model.act_threshold must be in (0, 1], got {self.act_threshold}")
        if not _is_number(self.rope_base) or self.rope_base <= 1.0:
            raise BitLMError(f"model.rope_base must be > 1, got {self.rope_base}")
        if not _is_number(self.rope_scale) or self.rope_scale <= 0.0:
            raise BitLMError(f"model.rope_scale must be > 0, got {self.rope_scale}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build from a plain mapping (config.json, checkpoint hyper-parameters, Hydra node),
        rejecting unknown keys with a message that lists the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"_target_"})
        if unknown:
            raise BitLMError(
                f"unknown model option(s) {unknown}; valid options are {sorted(known)}"
            )
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
