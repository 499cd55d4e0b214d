"""The model card: the ``README.md`` of every exported folder, which the Hugging Face Hub shows
as the model's page. Its metadata block (library, license, pipeline, tags) is what the Hub
indexes; its text gives the architecture, the metrics measured at export (config.json's
``metrics``) and how to load the model, naming the Hub repository once it is known
(``bitlm.io.hub.push_to_hub`` rewrites the card for the repository it uploads to)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData

CARD_NAME = "README.md"
MODEL_CARD = """---
{{ card_data }}
---
{% set repo = repo_id or "OWNER/NAME" %}
# {{ model_class }}

A bit-native language model trained with bitlm: it reads and writes raw bits, each byte a
9-bit frame (8 data bits and an even-parity bit), so every output decodes.

| | |
|---|---|
| parameters | {{ parameters }} |
| architecture | {{ architecture }} |
| context | {{ context }} |

## Measured

{% if metrics %}| metric | value |
|---|---|
{% for name, value in metrics.items() %}| `{{ name }}` | {{ value }} |
{% endfor %}
`val/bpb` is held-out bits per byte (lower is better); `K` (negentropy), `C` (LZ complexity)
and `S` (symbiosis) are the K/C/S telemetry of the model's predictions, each in [0, 1].
{% else %}Nothing was measured for this export.
{% endif %}

## Use

```python
from bitlm.io import load_model

model = load_model("hf://{{ repo }}")  # or a local folder
```

```bash
bitlm-generate ckpt_path=hf://{{ repo }} prompt="Once upon" max_new_bytes=200
```
"""
"""The card's Jinja template (``huggingface_hub.ModelCard.from_template``)."""


def write_card(
    model: torch.nn.Module,
    config: Mapping[str, Any],
    folder: str | Path,
    repo_id: str | None = None,
) -> None:
    """Write ``folder/README.md``: the card of ``model`` exported with ``config`` (config.json's
    content, whose metrics it reports), for the Hub repository ``repo_id`` when known."""
    card = ModelCard.from_template(
        card_data(), template_str=MODEL_CARD, **card_fields(model, config, repo_id)
    )
    card.save(Path(folder) / CARD_NAME)


def card_data() -> ModelCardData:
    """The card's metadata block, which the Hub indexes and filters by."""
    return ModelCardData(
        library_name="bitlm",
        license="agpl-3.0",
        pipeline_tag="text-generation",
        tags=["bit-level", "bitlm", "parity"],
    )


def card_fields(
    model: torch.nn.Module, config: Mapping[str, Any], repo_id: str | None
) -> dict[str, Any]:
    """What the model card template fills in: the architecture, the metrics recorded in
    ``config`` (config.json's content) and the Hub repository, when known."""
    model_config = model.config
    return {
        "repo_id": repo_id,
        "metrics": card_metrics(config.get("metrics", {})),
        "model_class": type(model).__name__,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "architecture": (
            f"{model_config.trunk} trunk, {model_config.n_layers} layers × d_model "
            f"{model_config.d_model}, {model_config.n_heads} heads, "
            f"{'reversible' if model_config.reversible else 'plain'} blocks, "
            f"{model_config.mode} mode"
        ),
        "context": f"{model_config.max_seq_len} bits ({model_config.max_bytes} bytes)",
    }


def card_metrics(metrics: Mapping[str, float]) -> dict[str, str]:
    """``metrics`` as the model card prints them: 4 significant digits, sorted by name."""
    return {name: f"{value:.4g}" for name, value in sorted(metrics.items())}
