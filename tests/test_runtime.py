"""Resolving where and how to run, from plain capability data (no GPU needed, nothing monkeypatched)."""

import pytest

from stages.lib.errors import SlothlineError
from stages.lib.params import Params
from stages.lib.runtime import Capabilities, probe, resolve

CPU = Capabilities(cuda=False)


def params(**sections) -> Params:
    return Params.model_validate({"data": {"sources": [{"path": "a.jsonl", "format": "alpaca"}]}, **sections})


def gpu(*, unsloth: bool, bf16: bool = True, bitsandbytes: bool = True) -> Capabilities:
    return Capabilities(cuda=True, device_name="Fake GPU", bf16=bf16, unsloth=unsloth, bitsandbytes=bitsandbytes)


def test_this_machine_is_probed_as_a_cpu():
    caps = probe()
    assert (caps.cuda, caps.device_name, caps.world_size, caps.rank) == (False, "cpu", 1, 0)


def test_auto_picks_hf_without_a_gpu():
    runtime = resolve(params(), CPU)
    assert (runtime.backend, runtime.device, runtime.precision, runtime.optim) == ("hf", "cpu", "float32", "adamw_torch")
    assert runtime.attention == "sdpa" and runtime.is_main_process


def test_unsloth_without_a_gpu_is_a_clear_error():
    with pytest.raises(SlothlineError, match="train.backend: unsloth needs a CUDA GPU"):
        resolve(params(train={"backend": "unsloth"}), CPU)


@pytest.mark.parametrize(("unsloth", "bf16", "expected"), [
    (True, True, ("unsloth", "Fake GPU", "bfloat16", "adamw_8bit")),
    (True, False, ("unsloth", "Fake GPU", "float16", "adamw_8bit")),
    (False, True, ("hf", "Fake GPU", "bfloat16", "adamw_8bit")),
])
def test_auto_on_a_gpu_picks_unsloth_when_installed(unsloth, bf16, expected):
    runtime = resolve(params(), gpu(unsloth=unsloth, bf16=bf16))
    assert (runtime.backend, runtime.device_name, runtime.precision, runtime.optim) == expected
    assert runtime.device == "cuda"


def test_gpu_without_bitsandbytes_falls_back_to_adamw_torch():
    assert resolve(params(train={"backend": "hf"}), gpu(unsloth=False, bitsandbytes=False)).optim == "adamw_torch"


def test_unsloth_on_a_gpu_without_the_package_is_a_clear_error():
    with pytest.raises(SlothlineError, match=r"needs the unsloth package \(pip install -e '.\[gpu\]'\)"):
        resolve(params(train={"backend": "unsloth"}), gpu(unsloth=False))


def test_4bit_on_cpu_is_a_clear_error():
    with pytest.raises(SlothlineError, match="model.load_in_4bit: 4-bit QLoRA needs a CUDA GPU"):
        resolve(params(model={"load_in_4bit": True}), CPU)


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_32bit", "adamw_bnb_8bit"])
def test_bitsandbytes_optimizers_on_cpu_are_a_clear_error(optim):
    with pytest.raises(SlothlineError, match=rf"train.optim: {optim} runs through bitsandbytes and needs a CUDA GPU; "
                                             "use adamw_torch"):
        resolve(params(train={"optim": optim}), CPU)
    assert resolve(params(train={"optim": optim}), gpu(unsloth=False)).optim == optim


def test_packing_on_a_gpu_trains_through_varlen_attention_and_never_cudnn():
    packed = resolve(params(train={"packing": True}), gpu(unsloth=True))
    padded = resolve(params(), gpu(unsloth=True))
    assert packed.attention == "varlen-flash (cuDNN off)" and padded.attention == "sdpa (cuDNN off)"
