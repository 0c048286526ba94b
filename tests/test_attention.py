"""The attention path for training: the registered varlen attention, the Unsloth varlen hook and the unsloth
backend's host row lengths."""

import importlib
import sys
import types

import pytest
import torch

from slothline.backends import attention
from slothline.errors import SlothlineError

TEXTS = ("Hello there!", "Reverse: abc", "xy")


@pytest.fixture(scope="module")
def models(tiny_qwen3):
    """The tiny Qwen3 (4 query heads, 2 K/V heads) with the registered varlen attention and with sdpa."""
    from transformers import AutoModelForCausalLM

    varlen = AutoModelForCausalLM.from_pretrained(tiny_qwen3, attn_implementation=attention.register_varlen_attention())
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_qwen3, attn_implementation="sdpa")
    return varlen.eval(), sdpa.eval()


def packed_row(tokenizer):
    """Documents packed into one padding-free row by TRL's collator, padded with a tail of position 0."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True,
                                               pad_to_multiple_of=16)
    row = collator([{"input_ids": ids} for ids in docs])
    assert "attention_mask" not in row and row["input_ids"].shape[1] > sum(map(len, docs))
    return docs, row


def test_packed_row_matches_each_document_alone(models, tokenizer):
    varlen, sdpa = models
    docs, row = packed_row(tokenizer)
    n = sum(map(len, docs))
    with torch.no_grad():
        together = varlen(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([sdpa(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in docs])
        causal_across = sdpa(input_ids=row["input_ids"], use_cache=False).logits[0]
    torch.testing.assert_close(together[:n], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(causal_across[:n], alone, atol=1e-3)  # the row's documents do see each other otherwise


def test_packed_row_gradients_match_sdpa_document_mask(models, tokenizer):
    """loss.backward() through the per-document path gives sdpa's gradients (sdpa masks the documents densely)."""
    _, row = packed_row(tokenizer)
    grads = []
    for model in models:
        model.zero_grad()
        model(input_ids=row["input_ids"], position_ids=row["position_ids"], labels=row["labels"],
              use_cache=False).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    for varlen_grad, sdpa_grad in zip(*grads):
        torch.testing.assert_close(varlen_grad, sdpa_grad, atol=1e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in grads[0])


def test_each_row_of_a_packed_batch_starts_a_document(models):
    """Rows are documents apart even where a row's positions do not start at 0; sdpa's dense mask agrees."""
    varlen, sdpa = models
    input_ids = torch.randint(0, 480, (2, 8), generator=torch.Generator().manual_seed(0))
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [3, 4, 5, 6, 0, 1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(varlen(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits,
                                   sdpa(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_sdpa(models, tokenizer, side):
    varlen, sdpa = models
    tokenizer.padding_side, previous = side, tokenizer.padding_side
    try:
        batch = tokenizer(list(TEXTS), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous
    assert not batch["attention_mask"].all()
    with torch.no_grad():
        torch.testing.assert_close(varlen(**batch, use_cache=False).logits, sdpa(**batch, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-4)


def test_generation_with_a_cache_needs_sdpa(tiny_qwen3, tokenizer):
    from transformers import AutoModelForCausalLM

    varlen = attention.register_varlen_attention()
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, attn_implementation=varlen).eval()
    prompt = tokenizer("Hello", return_tensors="pt")
    with pytest.raises(SlothlineError, match="set_attn_implementation"):
        model.generate(**prompt, max_new_tokens=3, do_sample=False)
    without_cache = model.generate(**prompt, max_new_tokens=3, do_sample=False, use_cache=False)
    model.set_attn_implementation("sdpa")
    assert torch.equal(model.generate(**prompt, max_new_tokens=3, do_sample=False), without_cache)


SLIDING_TEXTS = ("Hello there, how are you today?", "Reverse the word: abcdef", "one two three four five")


def sliding_window_models(directory, window):
    """A tiny checkpoint's model on the registered varlen attention and on sdpa, `window` keys a sliding layer."""
    from transformers import AutoModelForCausalLM

    load = lambda implementation: AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation=implementation, sliding_window=window).eval()
    return load(attention.register_varlen_attention()), load("sdpa")


@pytest.mark.parametrize("family", ["mistral", "gemma3_text"])
def test_sliding_window_layers_attend_as_sdpa_does(tmp_path, family):
    """Mistral 7B v0.1 and Gemma 3's local layers let each query see `sliding_window` keys, itself included: packed
    rows through the varlen attention give each document's logits alone on sdpa, and a padded batch and a single
    row give sdpa's logits; with a window longer than the texts the logits differ (the window is in force)."""
    from transformers import AutoTokenizer

    from tests.tiny_families import tiny_family_model

    directory = tiny_family_model(tmp_path / family, family)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    docs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in SLIDING_TEXTS]
    assert min(map(len, docs)) > 3
    ids = torch.tensor([[t for doc in docs for t in doc]])
    positions = torch.tensor([[i for doc in docs for i in range(len(doc))]])
    batch = tokenizer(list(SLIDING_TEXTS), add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.no_grad():
        varlen, sdpa = sliding_window_models(directory, 3)
        together = varlen(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat([sdpa(input_ids=torch.tensor([doc]), use_cache=False).logits[0] for doc in docs])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(varlen(**batch, use_cache=False).logits, sdpa(**batch, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-4)
        one = torch.tensor([docs[0]])
        torch.testing.assert_close(varlen(input_ids=one, use_cache=False).logits, sdpa(input_ids=one, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-4)
        _, whole = sliding_window_models(directory, 64)
        unwindowed = torch.cat([whole(input_ids=torch.tensor([doc]), use_cache=False).logits[0] for doc in docs])
    assert not torch.allclose(unwindowed, alone, atol=1e-3)


def test_soft_capped_attention_loads_on_eager_and_packed_rows_attend_within_their_documents(tmp_path, tokenizer):
    """Gemma 2 caps attention logits, which the varlen kernel cannot: on the varlen path it loads on eager, where
    transformers' own packed-sequence mask keeps a concatenated row's documents apart."""
    import dataclasses

    from transformers import AutoConfig, AutoModelForCausalLM

    from slothline import kinds
    from slothline.backends import ModelSpec, hf
    from slothline.runtime import Capabilities, resolve
    from tests.conftest import load

    config = AutoConfig.for_model("gemma2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  attn_logit_softcapping=50.0, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma2")
    tokenizer.save_pretrained(tmp_path / "gemma2")
    runtime = dataclasses.replace(resolve(load(), Capabilities(cuda=False)), attention=attention.VARLEN_FLASH)
    model, _ = hf.load(kinds.get("causal_lm"), ModelSpec(str(tmp_path / "gemma2"), None, 64), runtime)
    assert model.config._attn_implementation == "eager"
    docs, row = packed_row(tokenizer)
    n = sum(map(len, docs))
    with torch.no_grad():
        together = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in docs])
    torch.testing.assert_close(together[:n], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("takes_gqa, window", [(False, None), (True, None), (False, 2)])
def test_varlen_flash_call_matches_per_document_sdpa(monkeypatch, takes_gqa, window):
    """The CUDA branch's call of varlen_attn (stood in for by per-document SDPA): layout, bounds, causal window
    (a sliding window of W keys is W - 1 to the left), and enable_gqa passed only to a varlen_attn that accepts it
    (torch 2.12+), never to torch 2.11's."""
    seen = {}

    def reference(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_size, **gqa):
        assert cu_q.dtype == torch.int32 and cu_q is cu_k and window_size == (window - 1 if window else -1, 0)
        assert max_q == max_k == int(cu_q.diff().max())
        seen.update(gqa)
        return attention._per_document_sdpa(q, k, v, cu_q.tolist(), scale, 0.0, window)

    if takes_gqa:
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                        enable_gqa=False):
            return reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size,
                             enable_gqa=enable_gqa)
    else:
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
            return reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size)
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", varlen_attn)

    torch.manual_seed(0)
    q, k, v = torch.randn(9, 4, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    cu_seqlens = torch.tensor([0, 4, 5, 9], dtype=torch.int32)
    out = attention._varlen_flash(q, k, v, cu_seqlens, 4, 0.3, window)
    assert seen == ({"enable_gqa": True} if takes_gqa else {})
    mask = torch.ones(4, 4, dtype=torch.bool).tril().triu(1 - (window or 4))
    first = torch.nn.functional.scaled_dot_product_attention(
        q[:4].transpose(0, 1), k[:4].transpose(0, 1), v[:4].transpose(0, 1), attn_mask=mask, scale=0.3,
        enable_gqa=True).transpose(0, 1)
    torch.testing.assert_close(out[:4], first)
    assert out.shape == q.shape


def test_document_bounds_are_found_once_per_position_ids_tensor():
    """Every layer of a forward gets the same position_ids: the boundaries (a GPU sync to find) are found
    once for it, and found anew for the next batch's tensor, even one with equal values."""
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu_seqlens, bounds, longest = attention.document_bounds(packed, 1)
    assert bounds == [0, 3, 5, 9] and longest == 4 and cu_seqlens.dtype == torch.int32
    assert attention.document_bounds(packed, 1)[0] is cu_seqlens
    again = packed.clone()
    assert attention.document_bounds(again, 1)[0] is not cu_seqlens
    assert attention.document_bounds(torch.tensor([[0, 1, 0, 1]]), 2)[1] == [0, 2, 4, 6, 8]
    assert attention.document_bounds(torch.arange(5)[None], 1) is None  # one document: not packed


@pytest.mark.parametrize(("device", "packing", "fixed_length", "path"), [
    ("cpu", True, None, attention.SDPA),
    ("cpu", False, False, attention.SDPA),
    ("NVIDIA H100 80GB HBM3", True, None, attention.VARLEN_FLASH),
    ("NVIDIA H100 80GB HBM3", True, True, attention.VARLEN_FLASH),
    ("NVIDIA H100 80GB HBM3", False, False, attention.SDPA_NO_CUDNN),
    ("NVIDIA H100 80GB HBM3", False, None, attention.SDPA_NO_CUDNN),
    ("NVIDIA H100 80GB HBM3", False, True, attention.SDPA),
])
def test_attention_path(device, packing, fixed_length, path):
    assert attention.attention_path(device, packing, fixed_length) == path


def test_set_sdpa_backends_turns_cudnn_off_except_for_the_default_path():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        attention.set_sdpa_backends(attention.SDPA)
        assert torch.backends.cuda.cudnn_sdp_enabled()
        attention.set_sdpa_backends(attention.VARLEN_FLASH)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


# The Unsloth hook, against stand-ins for Unsloth's modules (Unsloth needs CUDA) and for torch 2.11's varlen_attn.

def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
    return ("torch 2.11 varlen_attn", query, scale, window_size)


@pytest.fixture
def fake_unsloth(monkeypatch):
    """`unsloth` and `unsloth.utils.attention_dispatch` as Unsloth 2026.10.7 has them on torch 2.11."""
    monkeypatch.delenv("UNSLOTH_TORCH_VARLEN", raising=False)
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", varlen_attn_2_11)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    unsloth, utils, dispatch = (types.ModuleType(name) for name in
                                ("unsloth", "unsloth.utils", "unsloth.utils.attention_dispatch"))
    unsloth.__version__, unsloth.__path__, utils.__path__ = "2026.10.7", [], []
    dispatch._TORCH_VARLEN_ATTN = None  # what _load_torch_varlen_attn() gives without enable_gqa
    dispatch._torch_varlen_packed = lambda *args, **kwargs: None
    for module in (unsloth, utils, dispatch):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delitem(sys.modules, "slothline.backends.unsloth", raising=False)  # imported anew, on this unsloth
    yield dispatch
    sys.modules.pop("slothline.backends.unsloth", None)


def use_torch_varlen() -> bool:
    """The unsloth backend's hook, its module imported on the fake unsloth."""
    return importlib.import_module("slothline.backends.unsloth").use_torch_varlen()


def test_unsloth_hook_installs_a_varlen_attn_that_takes_enable_gqa(fake_unsloth):
    assert use_torch_varlen() is True
    q = torch.zeros(3, 4, 8)
    # As Unsloth's _torch_varlen_packed calls it:
    out = fake_unsloth._TORCH_VARLEN_ATTN(q, q, q, None, None, 3, 3, scale=0.5, window_size=(-1, 0), enable_gqa=True)
    assert out == ("torch 2.11 varlen_attn", q, 0.5, (-1, 0))


def test_unsloth_hook_does_nothing_when_torch_varlen_takes_enable_gqa(fake_unsloth, monkeypatch):
    def varlen_attn_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                         enable_gqa=False):
        raise AssertionError("not called")

    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", varlen_attn_2_12)
    assert use_torch_varlen() is False
    assert fake_unsloth._TORCH_VARLEN_ATTN is None


def test_unsloth_hook_leaves_unsloths_own_choice_alone(fake_unsloth, monkeypatch):
    unsloths_own = object()
    fake_unsloth._TORCH_VARLEN_ATTN = unsloths_own
    assert use_torch_varlen() is False
    assert fake_unsloth._TORCH_VARLEN_ATTN is unsloths_own
    fake_unsloth._TORCH_VARLEN_ATTN = None
    monkeypatch.setenv("UNSLOTH_TORCH_VARLEN", "0")  # Unsloth's own switch for this branch
    assert use_torch_varlen() is False
    assert fake_unsloth._TORCH_VARLEN_ATTN is None


@pytest.mark.parametrize("moved", ["_TORCH_VARLEN_ATTN", "_torch_varlen_packed"])
def test_unsloth_hook_fails_clearly_when_unsloths_internals_moved(fake_unsloth, monkeypatch, moved):
    monkeypatch.delattr(fake_unsloth, moved)
    expected = rf"Unsloth 2026\.10\.7 has no unsloth\.utils\.attention_dispatch\.{moved}; .*unsloth==2026\.10\.7"
    with pytest.raises(SlothlineError, match=expected):
        use_torch_varlen()


def test_unsloth_hook_fails_clearly_when_the_dispatch_module_moved(fake_unsloth, monkeypatch):
    monkeypatch.delitem(sys.modules, "unsloth.utils.attention_dispatch")
    monkeypatch.delitem(sys.modules, "unsloth.utils")
    sys.modules["unsloth"].__version__ = "2027.1.1"
    del sys.modules["unsloth"].__path__  # a plain module: nothing can be imported below it
    with pytest.raises(SlothlineError, match=r"Unsloth 2027\.1\.1 has no unsloth\.utils\.attention_dispatch"):
        use_torch_varlen()


@pytest.mark.gpu
def test_varlen_kernel_on_cuda_matches_per_document_sdpa(tiny_qwen3, tokenizer):
    """torch's varlen_attn on a packed bf16 row: the same logits and gradients as per-document SDPA."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.bfloat16,
                                                 attn_implementation=attention.register_varlen_attention()).cuda()
    _, row = packed_row(tokenizer)
    row = {name: t.cuda() for name, t in row.items()}
    results = []
    for per_document in (False, True):
        if per_document:  # the reference: the same function's CPU branch, on the GPU
            model.float()
        model.zero_grad()
        out = model(**row, use_cache=False)
        out.loss.backward()
        results.append((out.logits.float(), [p.grad.float() for p in model.parameters()]))
    (logits, grads), (ref_logits, ref_grads) = results
    # bf16 against float32 differs by about 2% (logits) and 4% (gradients) on this model; attention
    # across the row's documents would differ by over 80%.
    assert (logits - ref_logits).norm() / ref_logits.norm() < 0.1
    for grad, ref in zip(grads, ref_grads):
        assert (grad - ref).norm() / ref.norm() < 0.1


@pytest.mark.gpu
def test_varlen_kernel_on_cuda_keeps_a_sliding_window(tmp_path):
    """torch's varlen_attn with a sliding window (Mistral 7B v0.1's layers, 3 keys here) on a packed bf16 row: the
    logits of the same function's per-document branch in float32 with the window, not those without it."""
    from transformers import AutoTokenizer

    from tests.tiny_families import tiny_family_model

    directory = tiny_family_model(tmp_path / "mistral", "mistral")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    docs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in SLIDING_TEXTS]
    row = {"input_ids": torch.tensor([[t for doc in docs for t in doc]]),
           "position_ids": torch.tensor([[i for doc in docs for i in range(len(doc))]])}
    with torch.no_grad():
        windowed, _ = sliding_window_models(directory, 3)
        unwindowed, _ = sliding_window_models(directory, 64)
        references = [model(**row, use_cache=False).logits[0] for model in (windowed, unwindowed)]
        on_gpu = {name: t.cuda() for name, t in row.items()}
        logits = windowed.to("cuda", torch.bfloat16)(**on_gpu, use_cache=False).logits[0].float().cpu()
    errors = [float((logits - ref).norm() / ref.norm()) for ref in references]
    print({"relative_error_windowed": errors[0], "relative_error_unwindowed": errors[1]})
    assert errors[0] < 0.1 and errors[1] > 3 * errors[0]


# The unsloth backend's host row lengths, against a stand-in for `unsloth.utils.packing` that keeps Unsloth
# 2026.10.7's per-batch caches and reads (`.item()`, `.tolist()`) as its own functions do.

def unsloth_packing_module():
    packing = types.ModuleType("unsloth.utils.packing")
    packing._PACKED_INFO_CACHE, packing._SEGMENT_LENGTHS_CACHE, packing._PADDED_CU_SEQLENS_CACHE = {}, {}, {}
    packing.reads = []  # what the stand-in read back from the device

    def get_packed_info_from_kwargs(kwargs, device):
        seq_lengths = kwargs.get("packed_seq_lengths")
        if seq_lengths is None:
            return None
        entry = packing._PACKED_INFO_CACHE.get(device)
        if entry is not None and entry["seq_lengths"] is seq_lengths:
            return entry["result"]
        packing.reads.append("longest")
        lengths = seq_lengths.to(device=device, dtype=torch.int32)
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        result = (lengths, cu_seqlens, int(lengths.max().item()))
        packing._PACKED_INFO_CACHE[device] = {"seq_lengths": seq_lengths, "result": result}
        return result

    def packed_segment_lengths(seq_info, total_tokens=None):
        entry = packing._SEGMENT_LENGTHS_CACHE.get(seq_info[0].device)
        if entry is not None and entry[0] is seq_info[0] and entry[1] == total_tokens:
            return entry[2]
        packing.reads.append("lengths")
        lengths = tuple(seq_info[0].tolist())
        return lengths + ((total_tokens - sum(lengths),) if total_tokens and total_tokens > sum(lengths) else ())

    def cover_padded_cu_seqlens(seq_info, total_tokens):
        _, cu_seqlens, longest = seq_info
        entry = packing._PADDED_CU_SEQLENS_CACHE.get(cu_seqlens.device)
        if entry is not None and entry["cu_seqlens"] is cu_seqlens and entry["total"] == total_tokens:
            return entry["result"]
        packing.reads.append("last boundary")
        padding = total_tokens - int(cu_seqlens[-1].item())
        if padding > 0:
            return torch.cat([cu_seqlens, torch.tensor([total_tokens], dtype=torch.int32)]), max(longest, padding)
        return cu_seqlens, longest

    packing.get_packed_info_from_kwargs = get_packed_info_from_kwargs
    packing.packed_segment_lengths = packed_segment_lengths
    packing.cover_padded_cu_seqlens = cover_padded_cu_seqlens
    return packing


@pytest.fixture
def fake_packing(fake_unsloth, monkeypatch):
    """`unsloth.utils.packing`, and a model family module that imported its function by name (as Unsloth's do)."""
    packing = unsloth_packing_module()
    family = types.ModuleType("unsloth.models.qwen3")
    family.get_packed_info_from_kwargs = packing.get_packed_info_from_kwargs
    monkeypatch.setitem(sys.modules, packing.__name__, packing)
    monkeypatch.setitem(sys.modules, family.__name__, family)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)  # no CUDA here
    return packing, family


def unsloth_backend():
    return importlib.import_module("slothline.backends.unsloth")


@pytest.mark.parametrize("pad_tail", [0, 3])
def test_host_row_lengths_give_unsloths_values_without_reading_the_device(fake_packing, pad_tail):
    packing, family = fake_packing
    lengths = torch.tensor([5, 3, 7])
    original = packing.get_packed_info_from_kwargs
    expected = original({"packed_seq_lengths": lengths.clone()}, torch.device("cpu"))
    total = 15 + pad_tail
    expected_segments = packing.packed_segment_lengths(expected, total)
    expected_cover = packing.cover_padded_cu_seqlens(expected, total)
    packing.reads.clear()

    assert unsloth_backend().host_row_lengths() is True
    assert family.get_packed_info_from_kwargs is packing.get_packed_info_from_kwargs is not original
    kwargs = {"packed_seq_lengths": lengths}  # on the host, as prepare_trainer leaves them
    info = family.get_packed_info_from_kwargs(kwargs, torch.device("cpu"))
    assert [x.tolist() if torch.is_tensor(x) else x for x in info] == [[5, 3, 7], [0, 5, 8, 15], 7]
    assert family.get_packed_info_from_kwargs(kwargs, torch.device("cpu")) is info  # one batch, one computation
    assert packing.packed_segment_lengths(info, total) == expected_segments
    cover = packing.cover_padded_cu_seqlens(info, total)
    assert cover[0].tolist() == expected_cover[0].tolist() and cover[1] == expected_cover[1]
    # nothing read back, except where a pad tail follows the rows (Unsloth's own code then, as before)
    assert packing.reads == ([] if not pad_tail else ["lengths", "last boundary"])


def test_host_row_lengths_leave_device_lengths_to_unsloth(fake_packing):
    packing, _ = fake_packing
    calls = []
    packing.get_packed_info_from_kwargs = lambda kwargs, device: calls.append(kwargs)  # Unsloth's own, recorded
    assert unsloth_backend().host_row_lengths() is True
    on_device = {"packed_seq_lengths": torch.tensor([2, 2], device="meta")}
    packing.get_packed_info_from_kwargs(on_device, torch.device("cpu"))
    packing.get_packed_info_from_kwargs({}, torch.device("cpu"))
    assert calls == [on_device, {}]


def test_host_row_lengths_step_aside_with_a_warning_when_unsloths_internals_moved(fake_packing):
    packing, family = fake_packing
    del packing._SEGMENT_LENGTHS_CACHE
    before = family.get_packed_info_from_kwargs
    with pytest.warns(UserWarning, match=r"unsloth\.utils\.packing\._SEGMENT_LENGTHS_CACHE.*unsloth==2026\.10\.7"):
        assert unsloth_backend().host_row_lengths() is False
    assert family.get_packed_info_from_kwargs is before


def test_unsloth_prepare_trainer_hands_the_model_host_row_lengths(fake_packing, monkeypatch):
    class Trainer:
        def _prepare_inputs(self, inputs):  # transformers moves every tensor to the device
            return dict(inputs, prepared=True)

    trainer = Trainer()
    unsloth_backend().prepare_trainer(trainer)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: ("host copy of", self.device.type))
    on_device = torch.tensor([4, 2], device="meta")
    inputs = trainer._prepare_inputs({"input_ids": torch.zeros(1, 6), "packed_seq_lengths": on_device})
    assert inputs["prepared"] and inputs["packed_seq_lengths"] == ("host copy of", "meta")
    on_host = torch.tensor([4, 2])
    assert trainer._prepare_inputs({"packed_seq_lengths": on_host})["packed_seq_lengths"] is on_host
    assert trainer._prepare_inputs({"input_ids": torch.zeros(2, 3)}).keys() == {"input_ids", "prepared"}
