"""Where and how a stage runs: hardware facts probed once into `Capabilities`, then `resolve(params,
caps)`, a pure function, picks the backend, precision, optimizer and attention path.

Every hardware-dependent choice follows the resolved device, never whether some package or kernel
happens to import: PyPI's default torch is a CUDA build that also runs on CPU-only machines.
"""

import importlib.util
import os
from dataclasses import dataclass

from stages.lib.errors import SlothlineError
from stages.lib.params import Params

BNB_OPTIMIZER_MARKS = ("8bit", "bnb", "paged_")  # optimizer names that run through bitsandbytes


@dataclass(frozen=True)
class Capabilities:
    """What this machine and process offer: a CUDA GPU (and its name and bf16 support), the unsloth
    and bitsandbytes packages, and the process's place in a torchrun job."""

    cuda: bool
    device_name: str = "cpu"
    bf16: bool = False
    unsloth: bool = False
    bitsandbytes: bool = False
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0


def probe() -> Capabilities:
    """This process's capabilities (the one place that asks torch and the package index)."""
    import torch

    cuda = torch.cuda.is_available()
    installed = lambda name: importlib.util.find_spec(name) is not None
    return Capabilities(
        cuda=cuda,
        device_name=torch.cuda.get_device_name() if cuda else "cpu",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        unsloth=installed("unsloth"),
        bitsandbytes=installed("bitsandbytes"),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


@dataclass(frozen=True)
class Runtime:
    """The resolved choices; recorded in metrics/train.json and the adapter's manifest."""

    backend: str  # unsloth | hf
    device: str  # cuda | cpu
    device_name: str
    precision: str  # float32 | bfloat16 | float16
    optim: str
    attention: str  # see stages.lib.attention
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main_process(self) -> bool:
        """The rank that writes every output (the only rank outside torchrun)."""
        return self.rank == 0


def resolve(params: Params, caps: Capabilities) -> Runtime:
    """Resolve `train.backend: auto`, precision, optimizer and attention; fail clearly on impossible asks."""
    from stages.lib.attention import attention_path

    requested, cuda = params.train.backend, caps.cuda
    if requested == "unsloth" and not (cuda and caps.unsloth):
        missing = "a CUDA GPU" if not cuda else "the unsloth package (pip install -e '.[gpu]')"
        raise SlothlineError(f"train.backend: unsloth needs {missing}; set train.backend: hf (or auto) to train here")
    if params.model.load_in_4bit and not cuda:
        raise SlothlineError("model.load_in_4bit: 4-bit QLoRA needs a CUDA GPU (bitsandbytes); set it to false on CPU")
    if params.lora.loftq and not cuda:
        raise SlothlineError("lora.loftq: LoftQ initialisation needs a CUDA GPU (bitsandbytes); set it to false here")
    backend = "unsloth" if requested == "unsloth" or (requested == "auto" and cuda and caps.unsloth) else "hf"
    if params.model.dtype == "float16" and not cuda:
        raise SlothlineError("model.dtype: float16 training needs a CUDA GPU; use auto (float32) or bfloat16 on CPU")
    if params.model.dtype == "bfloat16" and cuda and not caps.bf16:
        raise SlothlineError("model.dtype: this GPU has no bfloat16 support; use auto (float16 there) or float16")
    if params.model.dtype != "auto":
        precision = params.model.dtype
    else:
        precision = ("bfloat16" if caps.bf16 else "float16") if cuda else "float32"
    device = "cuda" if cuda else "cpu"
    return Runtime(backend, device, caps.device_name, precision, resolve_optim(params.train.optim, caps),
                   attention_path(device, params.train.packing, None),
                   caps.world_size, caps.rank, caps.local_rank)


def resolve_optim(optim: str, caps: Capabilities) -> str:
    """`auto`: bitsandbytes' 8-bit AdamW on a GPU that has it, else torch's AdamW. A bitsandbytes
    optimizer asked for by name needs both (an unknown name fails when the trainer is configured)."""
    if optim == "auto":
        return "adamw_8bit" if caps.cuda and caps.bitsandbytes else "adamw_torch"
    if any(mark in optim for mark in BNB_OPTIMIZER_MARKS) and not (caps.cuda and caps.bitsandbytes):
        missing = "a CUDA GPU" if not caps.cuda else "the bitsandbytes package (pip install -e '.[gpu]')"
        raise SlothlineError(f"train.optim: {optim} runs through bitsandbytes and needs {missing}; "
                             "use adamw_torch (or auto) here")
    return optim


def for_inference(manifest, caps: Capabilities) -> Runtime:
    """evaluate and merge: the backend and precision that train used, where this machine has them
    (else the hf backend in float32 on the CPU); generation keeps the default attention."""
    if manifest.load_in_4bit and not caps.cuda:
        raise SlothlineError("models/adapter was trained on a 4-bit base (model.load_in_4bit), which loads only on "
                             "a CUDA GPU; evaluate and merge it there")
    unsloth = manifest.backend == "unsloth" and caps.cuda and caps.unsloth
    precision = manifest.precision if caps.cuda else "float32"
    return Runtime("unsloth" if unsloth else "hf", "cuda" if caps.cuda else "cpu", caps.device_name, precision,
                   optim="none", attention="sdpa")
