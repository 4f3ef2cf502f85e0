"""One node, many processes: `torchrun --nproc-per-node N -m fastrlhf ...` runs the same commands with DDP.

Every rank walks the same global batches (same seed) and works on its own slice of rows; rollouts
are gathered so that advantages are whitened over the global batch, and each loss is weighted so
that DDP's gradient average equals the loss of one process on the whole batch.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError


def init(device):
    """Joins the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" in os.environ and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def local_device(device):
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def my_rows(rows):
    """This rank's contiguous slice of a global batch (the global batch size must divide evenly)."""
    n, w = len(rows), world()
    if n % w:
        raise UserError(f"the batch size ({n}) must be divisible by the number of processes ({w})")
    return rows[rank() * n // w:(rank() + 1) * n // w]


def wrap(model, fsdp=False):
    """DDP for a trained model (FSDP2 `fully_shard` per block with fsdp=True, for models that do not fit)."""
    if not dist.is_initialized():
        return model
    if fsdp:
        return _fully_shard(model)
    device = next(model.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _fully_shard(model):
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch 2.5
        from torch.distributed._composable.fsdp import fully_shard
    for module in model.modules():
        if type(module).__name__ in (getattr(model, "_no_split_modules", None) or ()):
            fully_shard(module)
    return fully_shard(model)


def full_state_dict(model):
    """The unsharded state dict of an FSDP2 model (a collective: every rank calls it), else None."""
    from torch.distributed.tensor import DTensor
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_rows(x):
    """Concatenates every rank's [rows, ...] tensor along rows (dim 0). Shapes beyond dim 0 must match."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average(x):
    """The mean of a tensor over ranks (for logging global values)."""
    x = x.detach()
    if not dist.is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world()


def max_over_ranks(value):
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _comm_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier():
    if dist.is_initialized():
        dist.barrier()


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
