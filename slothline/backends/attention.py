"""Which attention kernel training uses, chosen from the device, and the hf backend's varlen attention.

On CUDA, torch (2.11) picks cuDNN for causal GQA SDPA and builds a new cuDNN plan for every new
sequence length, so batches of varying length never go through it. Concatenated (padding-free) rows, packed or not, go
through torch's own varlen FlashAttention, `torch.nn.attention.varlen.varlen_attn`: on the hf backend
through the attention implementation registered here, on unsloth through Unsloth's own varlen branch
(which the unsloth backend turns on). Full-length batches keep torch's default SDPA; generation on a GPU
runs decode steps through the grouped attention registered here (no per-head copies of keys and values; compiled
steps through FlexAttention, reading only the key blocks that hold keys to attend).
Nothing here imports transformers or Unsloth at module level.
"""

import inspect
import weakref

import torch

from slothline.errors import SlothlineError

SDPA = "sdpa"  # torch's default SDPA kernel choice (cuDNN included)
SDPA_NO_CUDNN = "sdpa (cuDNN off)"  # SDPA with cuDNN disabled: flash / memory-efficient kernels
VARLEN_FLASH = "varlen-flash (cuDNN off)"  # packed rows through torch's varlen kernel; other SDPA without cuDNN
VARLEN_ATTENTION = "varlen_sdpa"  # the transformers attention implementation registered below


def attention_path(device: str, padding_free: bool, fixed_length: bool | None) -> str:
    """The attention path to train with, as recorded in metrics/train.json.

    `device` is the runtime's device: "cpu" or a CUDA device name. `padding_free`: batches concatenate their
    rows (packed or not). `fixed_length` is None when the batch lengths are not known in advance; they are
    then treated as varying.
    """
    if device == "cpu":
        return SDPA
    if padding_free:
        return VARLEN_FLASH
    return SDPA if fixed_length else SDPA_NO_CUDNN


def set_sdpa_backends(path: str) -> None:
    """Turn cuDNN SDPA off for the paths that train on varying lengths (process-wide); `SDPA` keeps torch's default."""
    if path != SDPA:
        torch.backends.cuda.enable_cudnn_sdp(False)


def register_varlen_attention() -> str:
    """Register the `varlen_sdpa` attention implementation with transformers and return its name.

    Load the model with `attn_implementation=register_varlen_attention()`. Its mask function is
    transformers' `flash_attention_mask`, so the attention receives the 2D padding mask, or None for
    unpadded rows, instead of a dense (T, T) mask.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)
    return VARLEN_ATTENTION


GROUPED_ATTENTION = "sdpa_grouped"  # generation: decode steps without copying keys and values per query head
KEY_BLOCK = 128  # keys per block of a compiled decode step's FlexAttention; blocks with no key to attend are skipped


def register_grouped_attention() -> str:
    """Register the `sdpa_grouped` attention implementation with transformers and return its name; switch a
    model to it for generation with `model.set_attn_implementation(register_grouped_attention())`."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_query_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)
    return GROUPED_ATTENTION


def grouped_query_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function for generation. A decode step (one query token) that is being compiled (the
    static cache's steps) attends through FlexAttention (`flex_decode`); one that is not, with more query than
    key/value heads, through SDPA with the query heads that share a key/value head folded into that head's query
    length (transformers' sdpa copies the keys and values once per query head whenever a mask is given: at batch 64
    that copy moves more bytes than the weights). Other calls are sdpa. Query (B, H, 1, D), key / value
    (B, H_kv, S, D); returns (B, 1, H, D) and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _, heads, length, _ = query.shape
    kv_heads = key.shape[1]
    plain = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    mask_fits = attention_mask is None or attention_mask.dtype == torch.bool
    if length == 1 and not plain and mask_fits and torch.compiler.is_compiling():
        return flex_decode(query, key, value, attention_mask, scaling), None
    if length != 1 or kv_heads == heads or plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return grouped_sdpa(query, key, value, attention_mask, scaling, dropout), None


def grouped_sdpa(query, key, value, attention_mask, scaling, dropout=0.0):
    """One decode step through SDPA, the query heads that share a key/value head folded into that head's query
    length (no per-head copies of keys and values). Returns (B, 1, H, D)."""
    batch, heads, _, head_dim = query.shape
    grouped = query.view(batch, key.shape[1], heads // key.shape[1], head_dim)  # head h = kv * groups + g, as repeat_kv
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling)
    return out.reshape(batch, 1, heads, head_dim)


def flex_decode(query, key, value, attention_mask, scaling):
    """One compiled decode step through FlexAttention, which inductor turns into its split-key decoding kernel (query
    heads of one key/value head in one program): it reads only the blocks of KEY_BLOCK keys that hold a key to attend
    (a static cache's unwritten tail and a short prompt's left padding are skipped), masks the rest by
    `attention_mask` (bool, True: attend; None: every key). torch SDPA's kernels (cuDNN on an H100) run one query
    token like a prompt's tile and read every key. Returns (B, 1, H, D)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    batch, length = query.shape[0], key.shape[2]
    grouped = key.shape[1] != query.shape[1]
    if attention_mask is None:
        return flex_attention(query, key, value, scale=scaling, enable_gqa=grouped).transpose(1, 2)
    attend = attention_mask[:, 0, -1, :].expand(batch, length)  # (B, S): the one query's keys

    def mask_mod(b, h, q, k):
        return attend[b, k]

    blocks = -(-length // KEY_BLOCK)
    used = torch.nn.functional.pad(attend, (0, blocks * KEY_BLOCK - length)).view(batch, blocks, KEY_BLOCK).any(-1)
    counts = used.sum(-1, dtype=torch.int32)[:, None, None]  # (B, 1 head, 1 query block)
    indices = torch.argsort(used.logical_not().to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None, None, :]
    block_mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=KEY_BLOCK, mask_mod=mask_mod,
                                          seq_lengths=(1, length))
    return flex_attention(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=grouped).transpose(1, 2)


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          sliding_window=None, softcap=None, position_ids=None, **kwargs):
    """transformers attention function: packed rows attend within their documents only; other calls are SDPA.

    Query (B, H, T, D), key / value (B, H_kv, T, D); returns (B, T, H, D) and no weights. A row is
    packed when its `position_ids` restart at 0 after its first token, as TRL's padding-free collator
    writes them; each restart begins a document. Such calls run `varlen_attn` on CUDA half precision
    and per-document causal SDPA elsewhere (the CPU, and the reference). A layer's `sliding_window`
    (Mistral 7B v0.1, Gemma 3's local layers) limits each query to that many keys, itself included, as
    transformers' masks do. Soft-capped logits (Gemma 2) are refused: `attention_of` loads such models on
    eager. Calls with a KV cache (queries shorter than keys) are refused: generate with
    `model.set_attn_implementation("sdpa")`.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    is_causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    if softcap is not None or not is_causal:
        raise SlothlineError(f"attention {VARLEN_ATTENTION!r} supports causal attention without soft-capping only; "
                             f"{type(module).__name__} needs eager or sdpa")
    batch, heads, length, head_dim = query.shape
    if key.shape[2] != length:
        raise SlothlineError(f"attention {VARLEN_ATTENTION!r} is for training; switch the model to sdpa "
                             f"before generating with a KV cache: model.set_attn_implementation('sdpa')")
    if attention_mask is not None:  # a padded batch: the causal (sliding) mask that sdpa would get
        attention_mask = causal_mask(length, sliding_window, query.device) & attention_mask[:, None, None, :]
    documents = None if position_ids is None or attention_mask is not None else document_bounds(position_ids, batch)
    if documents is None:
        if attention_mask is None and sliding_window is not None and length > sliding_window:
            attention_mask = causal_mask(length, sliding_window, query.device)[None, None]
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu_seqlens, bounds, longest = documents
    q, k, v = (x.transpose(1, 2).flatten(0, 1).contiguous() for x in (query, key, value))  # (B*T, heads, D)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not dropout:
        out = _varlen_flash(q, k, v, cu_seqlens, longest, scaling, sliding_window)
    else:
        out = _per_document_sdpa(q, k, v, bounds, scaling, dropout, sliding_window)
    return out.view(batch, length, heads, head_dim), None


def causal_mask(length: int, sliding_window: int | None, device) -> torch.Tensor:
    """(T, T) bool, True where query i attends key j: j <= i, and i - j < sliding_window where there is one."""
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return mask.triu(1 - sliding_window) if sliding_window is not None else mask


_last_bounds = (None, None)  # (a weak reference to a position_ids tensor, its document_bounds)


def document_bounds(position_ids, batch: int):
    """(cu_seqlens as int32, the same as a list, the longest document) of the flattened rows, or None when
    no row is packed. Finding them waits for the GPU, and every layer of a forward (and its recomputation
    under gradient checkpointing) gets the same position_ids tensor, so the answer for the last tensor
    seen is kept while that tensor lives."""
    global _last_bounds
    seen, bounds = _last_bounds
    if seen is not None and seen() is position_ids:
        return bounds
    starts = position_ids.expand(batch, -1) == 0
    if not starts[:, 1:].any():
        bounds = None
    else:
        starts[:, 0] = True  # every row starts a document
        starts = starts.flatten()
        edges = torch.cat([starts.nonzero().flatten(), torch.tensor([starts.numel()], device=starts.device)])
        bounds = (edges.to(torch.int32), edges.tolist(), int(edges.diff().max()))
    _last_bounds = (weakref.ref(position_ids), bounds)
    return bounds


def _varlen_flash(q, k, v, cu_seqlens, max_len: int, scale, sliding_window: int | None = None):
    """torch's varlen FlashAttention, causal (within `sliding_window` keys where given); K/V keep their fewer heads
    (torch 2.11 takes them as they are)."""
    from torch.nn.attention.varlen import varlen_attn

    takes_gqa = "enable_gqa" in inspect.signature(varlen_attn).parameters
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] and takes_gqa else {}
    left = sliding_window - 1 if sliding_window is not None else -1
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scale, window_size=(left, 0), **gqa)


def _per_document_sdpa(q, k, v, bounds, scale, dropout, sliding_window: int | None = None):
    """Causal SDPA (within `sliding_window` keys where given) over each document alone; (B*T, heads, D) in and out."""
    gqa = k.shape[1] != q.shape[1]
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        doc = [x[start:end].transpose(0, 1) for x in (q, k, v)]  # (heads, L, D)
        length = end - start
        mask = ({"attn_mask": causal_mask(length, sliding_window, q.device)}
                if sliding_window is not None and length > sliding_window else {"is_causal": True})
        out = torch.nn.functional.scaled_dot_product_attention(*doc, dropout_p=dropout, scale=scale, enable_gqa=gqa,
                                                               **mask)
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)
