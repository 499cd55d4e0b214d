"""The model format: exported folders (config.json, weights, model card; quantized exports),
``bitlm-train`` checkpoints (whole and sharded), and the Hugging Face Hub. Everything that
reads or writes a model goes through these names."""

from bitlm.io.export import (
    HUB_PREFIX,
    checkpoint_step,
    config_json,
    hub_errors,
    load_model,
    push_to_hub,
    quantization_of,
    read_config,
    read_folder,
    save_pretrained,
    serialized_weights,
    snapshot,
    stored_size,
)
from bitlm.io.quantize import SCHEMES, prepare_qat, quantize

__all__ = [
    "HUB_PREFIX",
    "SCHEMES",
    "checkpoint_step",
    "config_json",
    "hub_errors",
    "load_model",
    "prepare_qat",
    "push_to_hub",
    "quantization_of",
    "quantize",
    "read_config",
    "read_folder",
    "save_pretrained",
    "serialized_weights",
    "snapshot",
    "stored_size",
]
