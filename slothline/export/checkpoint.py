"""The files the GGUF export reads and checks: a Hugging Face checkpoint directory's config (as transformers reads
it) and tensors (shard by shard), and a GGUF file loaded in llama.cpp as the checks need it."""

import json
from pathlib import Path

from slothline.errors import SlothlineError


def checkpoint_config(model_dir: Path) -> dict:
    """config.json as transformers reads it today: a config written by transformers 4 (a base model's on the hub)
    gets `rope_parameters` from `rope_scaling` and Gemma 3's `layer_types` from its `sliding_window_pattern`."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir).to_dict()
    except (KeyError, ValueError, TypeError, AttributeError) as err:  # transformers' validation of its fields
        raise SlothlineError(f"{model_dir}/config.json: transformers cannot read it ({err.__class__.__name__}: "
                             f"{err}); fix or replace the file") from None


def checkpoint_tensors(model_dir: Path):
    """(shard, name, shape) of every tensor of the checkpoint, shard by shard in file order: the shards the
    index names, or model*.safetensors (not other formats' files beside them, such as Mistral's
    consolidated.safetensors)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    shards = sorted({model_dir / name for name in json.loads(index.read_text())["weight_map"].values()}) \
        if index.is_file() else sorted(model_dir.glob("model*.safetensors"))
    for shard in shards:
        with safe_open(shard, "pt") as f:
            yield from ((shard, name, tuple(f.get_slice(name).get_shape())) for name in f.keys())


def load_without_weight_repacking(llama_cpp, gguf_file: Path, lora_file: Path | None = None):
    """A llama.cpp model whose weights stay as the file stores them.

    By default llama.cpp repacks quantized weights into extra buffer types for the CPU's matrix units;
    on a Xeon with AMX that segfaults in the first decode of a q8_0 file of the tiny model. The check
    needs no speed, and llama-cpp-python exposes the model parameter (`use_extra_bufts`) only through
    its defaults, so those are switched off while the model loads.
    """
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def plain_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = plain_buffers
    try:
        return llama_cpp.Llama(model_path=str(gguf_file), lora_path=lora_file and str(lora_file), n_ctx=512, verbose=False)
    except ValueError as err:  # llama.cpp logs why (with verbose) and llama-cpp-python says only that it failed
        raise SlothlineError(
            f"{gguf_file}: llama.cpp cannot load the file written ({err}); it reads GGUF files as llama.cpp's own "
            "converter writes them, so this model's config or tokenizer holds something the writer does not "
            "convert (run `python -c \"import llama_cpp; llama_cpp.Llama('<file>', verbose=True)\"` for llama.cpp's "
            "reason); set export.formats: [] to keep the merged model alone") from None
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults
