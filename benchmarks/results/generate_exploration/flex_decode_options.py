"""How fast evaluate's decode-step attention (attention.flex_decode) reads the KV cache, per FlexAttention kernel
option, against the GPU's memory bandwidth: one layer of the Qwen3-4B shape (32 query heads, 8 key/value heads,
head_dim 128, bf16) at evaluate's batch of 128 rows, prompts of 100-400 tokens left-padded to 417 and 128 new tokens
(a static cache of 545), at decode step 64. Each option set is compiled, then timed replayed in a CUDA graph
(`us_per_call`) and, kernel by kernel, under the profiler over 20 calls (`attention_kernel_us`: inductor's
attention kernel); `bytes_read` counts the keys and values of the blocks the kernel reads. `{}` is inductor's default: SPLIT_KV
= 2 * SMs // (batch * kv heads), i.e. 1 here, and BLOCK_N 64, num_stages 1, num_warps 2 on an H100: one key block
in flight per program (inductor's CUDA heuristics pick 3 stages for sm_90, then an `else` meant for another chip
overwrites that choice; read from torch 2.14's source).

    python benchmarks/results/generate_exploration/flex_decode_options.py
"""
import collections
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from generate_speed import BANDWIDTH_TB_S, chip_limit  # noqa: E402

from slothline.backends import attention  # noqa: E402

OPTIONS = [{}, {"num_stages": 3}, {"num_warps": 4}, {"num_stages": 3, "num_warps": 4}, {"num_stages": 4, "num_warps": 4},
           {"BLOCK_N": 128, "num_stages": 2, "num_warps": 4}, {"BLOCK_N": 32, "num_stages": 4}, {"SPLIT_KV": 2},
           {"SPLIT_KV": 4}, {"SPLIT_KV": 4, "num_stages": 3, "num_warps": 4}]
ROWS, HEADS, KV_HEADS, HEAD_DIM, PADDED, NEW, STEP = 128, 32, 8, 128, 417, 128, 64


def inputs():
    torch.manual_seed(0)
    length = PADDED + NEW
    query = torch.randn(ROWS, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(ROWS, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in "kv")
    prompts = torch.randint(100, 401, (ROWS,), device="cuda")
    position = torch.arange(length, device="cuda")
    attend = (position >= PADDED - prompts[:, None]) & (position <= PADDED + STEP)  # left padding, unwritten tail
    mask = attend[:, None, None, :]
    blocks = -(-length // attention.KEY_BLOCK)
    used = torch.nn.functional.pad(attend, (0, blocks * attention.KEY_BLOCK - length)).view(ROWS, blocks, -1).any(-1)
    read = int(used.sum()) * attention.KEY_BLOCK * KV_HEADS * HEAD_DIM * 2 * 2  # keys and values, bf16
    return query, key, value, mask, read


def timed(options: dict, query, key, value, mask) -> tuple[float | str, float, torch.Tensor]:
    """flex_decode with these kernel options, compiled: µs per call replayed in a CUDA graph (as evaluate's decode
    steps run; the block mask's construction included), µs of inductor's attention template kernel alone (every
    kernel's time is printed too), and its output."""
    from torch.autograd import DeviceType
    from torch.nn.attention import flex_attention as module
    from triton.testing import do_bench_cudagraph

    plain = module.flex_attention
    module.flex_attention = functools.partial(plain, kernel_options=options) if options else plain
    try:
        torch._dynamo.reset()
        compiled = torch.compile(attention.flex_decode, fullgraph=True)
        step = functools.partial(compiled, query, key, value, mask, HEAD_DIM ** -0.5)
        out = step()
        try:
            graph_us = round(do_bench_cudagraph(step, rep=200) * 1000, 1)
        except RuntimeError as error:  # capture refused: the kernel times below still say what they say
            graph_us = f"not captured: {str(error)[:200]}"
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step()
            torch.cuda.synchronize()
        per_call = collections.Counter()
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                per_call[event.name[:70]] += event.time_range.elapsed_us() / 20
        print(json.dumps({"options": options, "kernel_us": {k: round(v, 1) for k, v in per_call.most_common()}}))
        attention_us = sum(us for name, us in per_call.items() if name.startswith("triton_tem"))
        return graph_us, attention_us, out
    finally:
        module.flex_attention = plain


def main() -> None:
    query, key, value, mask, read = inputs()
    reference = attention.grouped_sdpa(query, key, value, mask, HEAD_DIM ** -0.5).float()
    bandwidth = chip_limit(BANDWIDTH_TB_S)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "bytes_read": read}))
    for options in OPTIONS:
        try:
            graph_us, attention_us, out = timed(options, query, key, value, mask)
        except Exception as error:  # an option set the kernel refuses: say so and go on
            print(json.dumps({"options": options, "error": f"{type(error).__name__}: {str(error)[:300]}"}))
            continue
        print(json.dumps({"options": options, "us_per_call": graph_us,
                          "attention_kernel_us": round(attention_us, 1),
                          "tb_per_s": round(read / attention_us / 1e6, 2) if attention_us else None,
                          "of_bandwidth": round(read / attention_us / 1e6 / bandwidth, 3)
                          if attention_us and bandwidth else None,
                          "max_abs_diff_vs_sdpa": float((out.float() - reference).abs().max())}), flush=True)


if __name__ == "__main__":
    main()
