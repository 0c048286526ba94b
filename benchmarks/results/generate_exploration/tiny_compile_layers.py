"""Compiling each decoder layer whole for the prefill (instead of its norms and MLP: generation.compile_norms_and_mlps),
so the prefill's attention and rotary embeddings fuse too: a tiny Qwen3 on the CPU, a static cache, the answers and
the compiles counted. The layers share one code object, and the KV cache is indexed by the layer's number, which the
compiler treats as a constant, so every layer compiles its own graph, past torch's limit of 8 recompiles."""
import torch
from torch._dynamo.utils import counters
from transformers import Qwen3Config, Qwen3ForCausalLM

torch.manual_seed(0)
config = Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=12, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, eos_token_id=None, pad_token_id=0)
model = Qwen3ForCausalLM(config).eval()
ids = torch.randint(3, 500, (4, 40))
mask = torch.ones_like(ids)
mask[1, :7], mask[3, :15] = 0, 0
plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
for layer in model.model.layers:
    layer.compile(dynamic=True)
static = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                        cache_implementation="static", max_cache_len=64)
print({"layers": config.num_hidden_layers, "same_answers": bool((static == plain).all()),
       "graphs_compiled": counters["stats"]["unique_graphs"], "stats": dict(counters["stats"])})
