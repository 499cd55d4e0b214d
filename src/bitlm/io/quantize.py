"""Quantization with torchao: 4-bit quantization-aware training (QAT) and int8 / int4 exports
for CPU inference.

Schemes (``SCHEMES``), applied to every ``nn.Linear`` whose input width is a multiple of
``GROUP_SIZE`` (all projections of the blocks and the heads; embeddings and norms stay float):

* ``int8``: int8 weights (per-channel scales) and int8 dynamic activations
  (``Int8DynamicActivationInt8WeightConfig``); post-training, no calibration data needed.
* ``int4``: int4 weights in groups of 32 with int8 dynamic activations
  (``Int8DynamicActivationIntxWeightConfig``) — the 4-bit path that runs on CPU (torchao's
  ``Int4WeightOnlyConfig`` needs a GPU). Post-training on any model; on a model trained with
  ``module.qat=true`` it is QAT's convert step, since the fake quantizers training ran with
  (``prepare_qat``) compute exactly these groups and scales.

torchao is an optional dependency (``pip install 'bitlm[quant]'``); it is imported on use.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from bitlm.core.errors import BitLMError

SCHEMES = ("int8", "int4")
GROUP_SIZE = 32


def prepare_qat(model: nn.Module) -> None:
    """Insert torchao's fake quantizers for ``int4`` into ``model`` in place: forward passes
    round weights to int4 groups and activations to int8 (straight-through gradients), so
    training adapts the weights to the grid they will be converted to. Parameter names are
    unchanged: checkpoints and exports load into an ordinary model."""
    torchao = _torchao()
    config = torchao.quantization.qat.QATConfig(_base_config("int4"), step="prepare")
    torchao.quantization.quantize_(model, config, filter_fn=_quantizable)


def quantize(model: nn.Module, scheme: str) -> nn.Module:
    """Quantize ``model``'s linear layers in place with ``scheme`` and return it (eval mode),
    recording the scheme as ``model.quantization`` (what ``bitlm.io.folder`` saves it under).
    ``model`` must be an ordinary float model (build it from the exported weights)."""
    if scheme not in SCHEMES:
        raise BitLMError(f"quantization scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    torchao = _torchao()
    torchao.quantization.quantize_(model, _base_config(scheme), filter_fn=_quantizable)
    model.quantization = scheme
    return model.eval()


def _base_config(scheme: str) -> Any:
    quantization = _torchao().quantization
    if scheme == "int8":
        return quantization.Int8DynamicActivationInt8WeightConfig()
    return quantization.Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=quantization.PerGroup(GROUP_SIZE)
    )


def _quantizable(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and module.in_features % GROUP_SIZE == 0


def _torchao() -> Any:
    """Import torchao (and its submodules used here), quietening the notices it logs on import
    (missing optional GPU kernels, deprecations) that say nothing to a CPU user."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        import torchao
        import torchao.quantization
        import torchao.quantization.qat
    except ImportError as err:
        raise BitLMError(
            "quantization needs torchao: pip install 'bitlm[quant]' (torchao==0.18.0)"
        ) from err
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return torchao
