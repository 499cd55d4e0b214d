"""Every way text comes out of a model, behind one options value (``GenerationOptions``).

``causal.py`` (bit-by-bit sampling with a key/value cache, computed parity bits),
``diffusion.py`` (iterative denoising of masked frames, parity repair), ``sample.py`` (one entry
point dispatching on the model's mode), ``safety.py`` (the safety gate, safe inference and
re-sampling), ``text.py`` (text in, text out: what the commands and the server share).
"""

from bitlm.generation.causal import generate_bits
from bitlm.generation.diffusion import Sample, diffusion_generate
from bitlm.generation.options import GenerationOptions
from bitlm.generation.safety import (
    DriftWatch,
    SafetyError,
    SafetyGate,
    hil_safe_inference,
    safe_sample_with_retry,
)
from bitlm.generation.sample import generate, sample, sampling_mode
from bitlm.generation.text import generate_text, load_bit_model, text_telemetry

__all__ = [
    "DriftWatch",
    "GenerationOptions",
    "SafetyError",
    "SafetyGate",
    "Sample",
    "diffusion_generate",
    "generate",
    "generate_bits",
    "generate_text",
    "hil_safe_inference",
    "load_bit_model",
    "safe_sample_with_retry",
    "sample",
    "sampling_mode",
    "text_telemetry",
]
