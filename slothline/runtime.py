"""Where and how a stage runs: hardware facts probed once into `Capabilities`, then `resolve(params,
caps)`, a pure function, picks the backend, precision, optimizer and attention path.

Every hardware-dependent choice follows the resolved device, never whether some package or kernel
happens to import: PyPI's default torch is a CUDA build that also runs on CPU-only machines.

Several GPUs (`train.num_gpus`): `processes_to_start` says how many processes the stage starts, and
`start_processes` starts them under PyTorch's launcher (torchrun), one per GPU; in each of them,
`process_group` joins the job and the main process (rank 0) alone writes outputs.
"""

import gc
import importlib.util
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from slothline.artifacts import TUNED_DIR
from slothline.errors import SlothlineError
from slothline.params import Params

BNB_OPTIMIZER_MARKS = ("8bit", "bnb", "paged_")  # optimizer names that run through bitsandbytes
# NVLink multicast (NVLS) off in NCCL, PyTorch's symmetric memory and NVSHMEM, for the processes the stage
# starts: on a shared multi-GPU host it can put the host's GPUs out of service. A value already set wins.
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PR_SET_PDEATHSIG = 1  # Linux prctl(2): the signal this process gets when its parent dies


@dataclass(frozen=True)
class Capabilities:
    """What this machine and process offer: CUDA GPUs (how many, the first one's name and bf16 support),
    the unsloth and bitsandbytes packages, and the process's place in a job that a launcher (torchrun,
    accelerate launch) started: `launched`, its world size, its processes on this node, its ranks."""

    cuda: bool
    device_name: str = "cpu"
    bf16: bool = False
    unsloth: bool = False
    bitsandbytes: bool = False
    gpu_count: int = 0
    launched: bool = False
    world_size: int = 1
    local_world_size: int = 1
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
        gpu_count=torch.cuda.device_count() if cuda else 0,
        launched="WORLD_SIZE" in os.environ,
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
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
    attention: str  # see slothline.attention
    padding_free: bool = False  # each batch's rows concatenated, without padding (packed or not)
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main_process(self) -> bool:
        """The rank that writes every output (the only rank outside torchrun)."""
        return self.rank == 0


def resolve(params: Params, caps: Capabilities) -> Runtime:
    """Resolve `train.backend: auto`, precision, optimizer and attention; fail clearly on impossible asks."""
    from slothline.backends.attention import attention_path

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
    padding_free = rows_concatenated(params.train, device)
    return Runtime(backend, device, caps.device_name, precision, resolve_optim(params.train.optim, caps),
                   attention_path(device, padding_free, None), padding_free,
                   caps.world_size, caps.rank, caps.local_rank)


def rows_concatenated(train, device: str) -> bool:
    """Whether training batches concatenate their rows (causal LMs: `train.packing`, or `train.padding_free`,
    whose auto means on a GPU, where varlen attention makes that the fast path; other kinds pad)."""
    setting = getattr(train, "padding_free", False)
    return getattr(train, "packing", False) or (device == "cuda" if setting == "auto" else setting)


def check_machine(params: Params, caps: Capabilities) -> None:
    """Refuse, before anything runs, what this machine cannot do for these params: what `resolve` and
    `processes_to_start` refuse, and a 4-bit merge without a GPU (train and merge check again: the machine
    may change between runs)."""
    resolve(params, caps)
    processes_to_start(params, caps)
    if params.merge.save_method == "merged_4bit" and not caps.cuda:
        raise SlothlineError("merge.save_method: merged_4bit needs a CUDA GPU (bitsandbytes); use merged_16bit here")


def processes_to_start(params: Params, caps: Capabilities) -> int:
    """How many training processes the train stage starts: `train.num_gpus` on this machine (`auto`: every
    visible GPU, or 1 without a GPU). 1 trains in this process, as does a process that a launcher started
    (its job has its processes already; `train.num_gpus` must then be auto or its processes per node)."""
    requested = params.train.num_gpus
    if caps.launched:
        if requested not in ("auto", caps.local_world_size):
            raise SlothlineError(f"train.num_gpus: {requested}, but the launcher started {caps.local_world_size} "
                                 f"processes on this node; set train.num_gpus to {caps.local_world_size} or auto")
        return 1
    if requested == "auto":
        return max(caps.gpu_count, 1)
    if requested > 1 and requested > caps.gpu_count:
        if not caps.cuda:
            raise SlothlineError(f"train.num_gpus: {requested}, but this machine has no CUDA GPU; "
                                 "set train.num_gpus: 1 (or auto) to train on the CPU")
        raise SlothlineError(f"train.num_gpus: {requested}, but this process sees {caps.gpu_count} GPUs "
                             f"(CUDA_VISIBLE_DEVICES may hide some); set train.num_gpus to at most {caps.gpu_count}, "
                             "or auto")
    return requested


def run_job(params: Params, module: str, work: Callable, what: str) -> None:
    """`work(params, runtime)` on the runtime resolved for `params` (an impossible ask fails here, once): in
    this process, or with `train.num_gpus` > 1 in that many processes started as `python -m module` under
    torchrun (this process then exits with their status)."""
    caps = probe()
    runtime = resolve(params, caps)
    if (processes := processes_to_start(params, caps)) > 1:
        print(f"{what} in {processes} processes, one per GPU (torchrun, DDP)", flush=True)
        sys.exit(start_processes(processes, module))
    with process_group(runtime):
        work(params, runtime)


def start_processes(count: int, module: str) -> int:
    """Run `python -m module` in `count` processes on this host under PyTorch's launcher (torchrun), with
    NVLink multicast off unless set; returns the exit status (0, or that of the first process to fail)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name, value in NVLINK_MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={count}", "--module", module]))
    except ChildFailedError as failed:  # the failed process printed its own error
        return failed.get_first_failure()[1].exitcode
    return 0


@contextmanager
def process_group(runtime: Runtime) -> Iterator[None]:
    """In a job of several processes, bind this process's GPU and open the process group (NCCL on GPUs,
    gloo on CPUs) that the Trainer then uses, closing it at the end; a lone process needs neither."""
    if runtime.world_size == 1:
        yield
        return
    import torch
    import torch.distributed as dist

    end_with_launcher()
    device = None
    if runtime.device == "cuda":
        device = torch.device("cuda", runtime.local_rank)
        torch.cuda.set_device(device)
    else:  # accelerate would name the device `cpu:0`, which torch.load refuses as the place to resume onto
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    dist.init_process_group("nccl" if device else "gloo", device_id=device)
    try:
        yield
        dist.barrier()  # the processes end together, none closing its links while another still writes
    finally:
        gc.collect()  # the Trainer's DDP model holds the group: free it now, not as the interpreter shuts down
        dist.destroy_process_group()


def end_with_launcher() -> None:
    """Have Linux kill this process when its launcher dies. torchrun starts each process in a session of its
    own, so a process whose torchrun was killed (SIGKILL gives torchrun no chance to stop it) would go on
    training and writing outputs beside the run that replaces it."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main_process_result(runtime: Runtime, compute: Callable):
    """`compute()` run by the main process alone; every process of the job gets its result."""
    result = [compute() if runtime.is_main_process else None]
    if runtime.world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(result, src=0)
    return result[0]


def gather(runtime: Runtime, value) -> list:
    """`value` of every process of the job, in rank order."""
    if runtime.world_size == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * runtime.world_size
    dist.all_gather_object(values, value)
    return values


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


def evaluation_runtime(manifest, caps: Capabilities) -> Runtime:
    """evaluate: `inference_runtime` on the hf backend, whichever backend trained the model. transformers with the
    adapter merged generates many times faster than Unsloth's generate, more so on a compiled static cache
    (Unsloth 2026.10.7 forces a dynamic cache and its own eager decode kernels; benchmarks/generate_speed.py), and
    a process that never imports Unsloth keeps transformers' own model classes and compile settings. Both backends
    write the same adapter."""
    from dataclasses import replace

    return replace(inference_runtime(manifest, caps), backend="hf")


def inference_runtime(manifest, caps: Capabilities) -> Runtime:
    """evaluate and merge: the backend and precision that train used, where this machine has them
    (else the hf backend in float32 on the CPU); generation keeps the default attention."""
    if manifest.load_in_4bit and not caps.cuda:
        raise SlothlineError(f"{TUNED_DIR} was trained on a 4-bit base (model.load_in_4bit), which loads only on "
                             "a CUDA GPU; evaluate and merge it there")
    unsloth = manifest.backend == "unsloth" and caps.cuda and caps.unsloth
    precision = manifest.precision if caps.cuda else "float32"
    return Runtime("unsloth" if unsloth else "hf", "cuda" if caps.cuda else "cpu", caps.device_name, precision,
                   optim="none", attention="sdpa")
