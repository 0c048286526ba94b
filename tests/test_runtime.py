"""Resolving where and how to run, from plain capability data (no GPU needed, nothing monkeypatched)."""

import pytest

from slothline.errors import SlothlineError
from slothline.runtime import Capabilities, probe, resolve
from tests.conftest import load

CPU = Capabilities(cuda=False)


def gpu(*, unsloth: bool, bf16: bool = True, bitsandbytes: bool = True) -> Capabilities:
    return Capabilities(cuda=True, device_name="Fake GPU", bf16=bf16, unsloth=unsloth, bitsandbytes=bitsandbytes)


def test_this_machine_is_probed_as_a_cpu():
    caps = probe()
    assert (caps.cuda, caps.device_name, caps.world_size, caps.rank) == (False, "cpu", 1, 0)


def test_auto_picks_hf_without_a_gpu():
    runtime = resolve(load(), CPU)
    assert (runtime.backend, runtime.device, runtime.precision, runtime.optim) == ("hf", "cpu", "float32", "adamw_torch")
    assert runtime.attention == "sdpa" and runtime.is_main_process


def test_unsloth_without_a_gpu_is_a_clear_error():
    with pytest.raises(SlothlineError, match="train.backend: unsloth needs a CUDA GPU"):
        resolve(load(train={"backend": "unsloth"}), CPU)


@pytest.mark.parametrize(("unsloth", "bf16", "expected"), [
    (True, True, ("unsloth", "Fake GPU", "bfloat16", "adamw_8bit")),
    (True, False, ("unsloth", "Fake GPU", "float16", "adamw_8bit")),
    (False, True, ("hf", "Fake GPU", "bfloat16", "adamw_8bit")),
])
def test_auto_on_a_gpu_picks_unsloth_when_installed(unsloth, bf16, expected):
    runtime = resolve(load(), gpu(unsloth=unsloth, bf16=bf16))
    assert (runtime.backend, runtime.device_name, runtime.precision, runtime.optim) == expected
    assert runtime.device == "cuda"


def test_gpu_without_bitsandbytes_falls_back_to_adamw_torch():
    assert resolve(load(train={"backend": "hf"}), gpu(unsloth=False, bitsandbytes=False)).optim == "adamw_torch"


def test_unsloth_on_a_gpu_without_the_package_is_a_clear_error():
    with pytest.raises(SlothlineError, match=r"needs the unsloth package \(pip install -e '.\[gpu\]'\)"):
        resolve(load(train={"backend": "unsloth"}), gpu(unsloth=False))


def test_4bit_on_cpu_is_a_clear_error():
    with pytest.raises(SlothlineError, match="model.load_in_4bit: 4-bit QLoRA needs a CUDA GPU"):
        resolve(load(model={"load_in_4bit": True}), CPU)


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_32bit", "adamw_bnb_8bit"])
def test_bitsandbytes_optimizers_on_cpu_are_a_clear_error(optim):
    with pytest.raises(SlothlineError, match=rf"train.optim: {optim} runs through bitsandbytes and needs a CUDA GPU; "
                                             "use adamw_torch"):
        resolve(load(train={"optim": optim}), CPU)
    assert resolve(load(train={"optim": optim}), gpu(unsloth=False)).optim == optim


def test_packing_on_a_gpu_trains_through_varlen_attention_and_never_cudnn():
    packed = resolve(load(train={"packing": True}), gpu(unsloth=True))
    padded = resolve(load(train={"padding_free": False}), gpu(unsloth=True))
    assert packed.attention == "varlen-flash (cuDNN off)" and padded.attention == "sdpa (cuDNN off)"
    assert packed.padding_free and not padded.padding_free


@pytest.mark.parametrize("backend", [True, False])
def test_unpacked_rows_are_padding_free_on_a_gpu_and_padded_on_the_cpu(backend):
    """train.padding_free: auto concatenates each batch's rows where varlen attention runs them (a GPU), on
    both backends; on the CPU a dense mask over the concatenated batch would cost more than the padding."""
    on_gpu = resolve(load(), gpu(unsloth=backend))
    assert on_gpu.padding_free and on_gpu.attention == "varlen-flash (cuDNN off)"
    on_cpu = resolve(load(), CPU)
    assert not on_cpu.padding_free and on_cpu.attention == "sdpa"
    assert resolve(load(train={"padding_free": True}), CPU).padding_free
    assert resolve(load(train={"packing": True, "padding_free": False}), CPU).padding_free  # packing implies it


@pytest.mark.parametrize("kind", ["vision", "classifier"])
def test_kinds_without_packing_resolve_to_unpacked_attention(kind):
    """train.packing is a causal LM setting: the other kinds' rows are never packed."""
    assert resolve(load(kind), CPU).attention == "sdpa"
    assert resolve(load(kind), gpu(unsloth=True)).attention == "sdpa (cuDNN off)"
    assert not resolve(load(kind), gpu(unsloth=True)).padding_free
