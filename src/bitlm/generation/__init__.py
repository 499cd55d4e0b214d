"""Every way text comes out of a model, behind one options value (``GenerationOptions``).

``causal.py`` (running batches of sequences with per-row key/value caches, whole-frame draws
for the tree decoder, computed parity bits; ``draws.py`` the distributions and uniforms),
``diffusion.py`` (iterative denoising of masked frames, parity repair), ``sample.py`` (one entry
point dispatching on the model's mode), ``safety.py`` (the safety gate, safe inference and
re-sampling), ``text.py`` (text in, text out: what the commands and the server share).
"""

from bitlm.generation.causal import CausalBatch, generate_bits, generate_many
from bitlm.generation.diffusion import Sample, diffusion_generate, diffusion_generate_many
from bitlm.generation.options import GenerationOptions
from bitlm.generation.safety import (
    DriftWatch,
    SafetyError,
    SafetyGate,
    hil_safe_inference,
    safe_sample_with_retry,
)
from bitlm.generation.sample import generate, sample, sample_many, sampling_mode
from bitlm.generation.text import generate_text, load_bit_model, text_telemetry

__all__ = [
    "CausalBatch",
    "DriftWatch",
    "GenerationOptions",
    "SafetyError",
    "SafetyGate",
    "Sample",
    "diffusion_generate",
    "diffusion_generate_many",
    "generate",
    "generate_bits",
    "generate_many",
    "generate_text",
    "hil_safe_inference",
    "load_bit_model",
    "safe_sample_with_retry",
    "sample",
    "sample_many",
    "sampling_mode",
    "text_telemetry",
]
