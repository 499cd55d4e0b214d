"""The model format: exported folders (config.json, weights, model card; quantized exports),
``bitlm-train`` checkpoints (whole and sharded), and the Hugging Face Hub. Everything that
reads or writes a model goes through these names.

Modules: ``folder`` (the exported folder: config.json, weights, quantized weights), ``card``
(its README.md model card), ``checkpoint`` (``bitlm-train``'s ``.ckpt`` files and sharded
folders), ``hub`` (download, upload, Hub errors), ``load`` (``load_model``, which takes any of
them), ``weights`` (weights into a model: strict, finite), ``quantize`` (QAT, int8 / int4)."""

from bitlm.io.checkpoint import checkpoint_step
from bitlm.io.folder import (
    FORMAT,
    config_json,
    quantization_of,
    read_config,
    read_folder,
    save_pretrained,
    serialized_weights,
    stored_size,
)
from bitlm.io.hub import HUB_PREFIX, hub_errors, push_to_hub, snapshot
from bitlm.io.load import load_model
from bitlm.io.quantize import SCHEMES, prepare_qat, quantize
from bitlm.io.weights import check_finite, nonfinite_weights

__all__ = [
    "FORMAT",
    "HUB_PREFIX",
    "SCHEMES",
    "check_finite",
    "checkpoint_step",
    "config_json",
    "hub_errors",
    "load_model",
    "nonfinite_weights",
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
