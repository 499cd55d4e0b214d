"""Hugging Face Hub integration of every bitlm model class (``PyTorchModelHubMixin``).

``model.save_pretrained(folder)``, ``model.push_to_hub("owner/name")`` and
``BitTransformerLM.from_pretrained("owner/name" or folder)`` are the mixin's, with three
bitlm rules (the folder format itself lives in ``bitlm.io.export``):

* ``config.json`` is bitlm's (``{"format", "model", ["quantization"]}``), not the constructor's
  arguments, so the same folder loads through ``bitlm.io.export.load_model`` and every CLI;
* loading is **strict**: a missing or unexpected weight is an error (the mixin's default,
  ``strict=False``, silently keeps random weights for a renamed layer);
* Hub failures (offline, unknown repository, no access) become one ``BitLMError`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import PyTorchModelHubMixin

from bitlm.core.errors import BitLMError

MODEL_CARD = """---
{{ card_data }}
---
{% set repo = repo_id or "OWNER/NAME" %}{% set repo = repo_id or "OWNER/NAME" %}
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


class Pretrained(
    PyTorchModelHubMixin,
    library_name="bitlm",
    license="agpl-3.0",
    pipeline_tag="text-generation",
    tags=["bitlm", "bit-level", "parity"],
    model_card_template=MODEL_CARD,
):
    """The mixin, as bitlm's model classes (``TransformerLM`` and its subclasses) use it."""

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> str | None:
        """The mixin's ``save_pretrained`` (weights, config.json, README.md model card) with
        bitlm's config.json (``bitlm.io.export.config_json``: pass ``config=`` to add metrics); not
        atomic: ``bitlm.io.export.save_pretrained`` stages it."""
        from bitlm.io.export import config_json

        config = kwargs.setdefault("config", config_json(self))
        card = self.card_kwargs(config, kwargs.get("repo_id"))
        kwargs["model_card_kwargs"] = card | kwargs.get("model_card_kwargs", {})
        return super().save_pretrained(save_directory, **kwargs)

    def card_kwargs(self, config: dict[str, Any], repo_id: str | None) -> dict[str, Any]:
        """What the model card template fills in: the architecture, the metrics recorded in
        ``config`` (config.json's content) and the Hub repository, when known."""
        from bitlm.io.export import card_metrics

        model = self.config
        return {
            "repo_id": repo_id,
            "metrics": card_metrics(config.get("metrics", {})),
            "model_class": type(self).__name__,
            "parameters": f"{sum(p.numel() for p in self.parameters()):,}",
            "architecture": (
                f"{model.trunk} trunk, {model.n_layers} layers × d_model {model.d_model}, "
                f"{model.n_heads} heads, {'reversible' if model.reversible else 'plain'} "
                f"blocks, {model.mode} mode"
            ),
            "context": f"{model.max_seq_len} bits ({model.max_bytes} bytes)",
        }

    def _save_pretrained(self, save_directory: Path) -> None:
        from bitlm.io.export import write_weights

        write_weights(self.state_dict(), save_directory, getattr(self, "quantization", None))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any):
        """The mixin's ``from_pretrained`` (a local folder, or a Hub repository id), strict by
        default; ``BitLMError`` for Hub failures, a foreign folder or a model of another class
        (``bitlm.io.export.load_model`` takes any)."""
        from bitlm.io.export import hub_errors

        with hub_errors(f"download {pretrained_model_name_or_path}"):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **config_fields: Any,  # the mixin's reading of config.json; read_folder applies bitlm's
    ):
        from bitlm.io.export import read_folder, snapshot

        folder = snapshot(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        model = read_folder(folder, strict=strict)
        if not isinstance(model, cls):
            raise BitLMError(
                f"{model_id} holds a {type(model).__name__}, not a {cls.__name__}: load it with "
                "bitlm.io.export.load_model, which builds whichever class the config names"
            )
        return model.to(map_location).eval()
