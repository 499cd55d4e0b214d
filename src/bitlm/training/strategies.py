"""Distributed training: FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``.

``trainer=ddp`` / ``trainer=ddp_sim`` need nothing from here: DDP replicates the model, and the
reversible stack accumulates its gradients through ordinary autograd, once per parameter
(``bitlm.model.blocks``), which is what DDP's gradient hooks expect.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from bitlm.model.blocks import PlainStack, ReversibleStack


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with every process in the data-parallel dimension: FSDP2
    shards parameters, gradients and optimizer state over all ``num_nodes × devices`` ranks.

    The parent's defaults (``"auto"``) make the mesh ``num_nodes`` data-parallel × ``devices``
    tensor-parallel, which for a model without tensor-parallel layers shards nothing; its sizes
    must otherwise be written out per machine. Here they follow ``trainer.devices`` and
    ``trainer.num_nodes``. ``BitLMModule.configure_model`` applies :func:`shard_model`.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def shard_model(model: nn.Module, mesh: DeviceMesh) -> None:
    """Shard ``model`` with FSDP2 (``fully_shard``) over the data-parallel ``mesh``.

    Wrap units: each block of a plain stack; each *branch* (attention F, MLP G) of a reversible
    block, because the reversible stack never calls a block's ``forward`` — it runs ``block.f``
    and ``block.g`` itself, in forward and again in its recomputing backward, and FSDP2 gathers
    a unit's parameters in that unit's forward hook and reduce-scatters its gradients after that
    unit's backward. Then the root, which holds the embeddings, the head and whatever is left.
    One unit is gathered at a time, so peak parameter memory is the shards plus the largest unit.
    """
    for stack in (m for m in model.modules() if isinstance(m, (PlainStack, ReversibleStack))):
        for block in stack.blocks:
            units = (block.f, block.g) if isinstance(stack, ReversibleStack) else (block,)
            for unit in units:
                fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
