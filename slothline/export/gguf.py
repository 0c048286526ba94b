"""Write GGUF files of merged models (and of LoRA adapters) with the `gguf` package, and check them.

GGUF writing follows llama.cpp's convert_hf_to_gguf for the families whose record in families.py has a
GGUF recipe: hyperparameters, tensors renamed through gguf's TensorNameMap (q/k rows permuted and norm
weights shifted where the recipe says), and the tokenizer (gguf_vocab).
"""

import importlib.util
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slothline.artifacts import ADAPTER_GGUF_FILE, BASE_GGUF_FILE, GGUF_FILE, MANIFEST_FILE, MODELFILE, Manifest
from slothline.errors import SlothlineError
from slothline.export import (PYTHON_QUANTIZATIONS, gguf_refusal, k_quant_refusal, lora_gguf_refusal, rope_of,
                              text_config)
from slothline.export.checkpoint import checkpoint_config, checkpoint_tensors, load_without_weight_repacking
from slothline.export.gguf_vision import MMPROJ_FILE, image_reference, vision_check, write_mmproj
from slothline.export.gguf_vocab import write_vocab
from slothline.export.ollama import modelfile
from slothline.families import PROBE_TEXT, family
from slothline.models import model_directory


def export_gguf(model_dir: Path, out_dir: Path, quantizations: list[str], enable_thinking: bool = False) -> dict:
    """For each quantization, `out_dir`/<quantization>/ with model.gguf (or, where `model_dir` holds a LoRA
    adapter, base.gguf of its base model and adapter.gguf) and an Ollama Modelfile prompting as the model was
    trained (with or without thinking); for a vision-language model, `out_dir`/mmproj.gguf too (its vision
    encoder, in float16, for every quantization). Every file is read back and generated from (the text, and
    an image question through the mmproj). Returns each file's checks."""
    problem = k_quant_refusal(quantizations)
    if problem:
        raise SlothlineError(problem)
    adapter = (model_dir / "adapter_config.json").is_file()  # merge.save_method: lora
    manifest = Manifest.read(model_dir) if (model_dir / MANIFEST_FILE).is_file() else None
    weights_dir = model_directory(manifest.base_model, manifest.revision) if adapter else model_dir
    name = manifest.base_model if manifest else model_dir.name  # the model trained from
    model_type = checkpoint_config(weights_dir)["model_type"]
    mmproj = out_dir / MMPROJ_FILE if family(model_type).gguf.mmproj else None
    if mmproj:
        write_mmproj(weights_dir, mmproj)
    checking = importlib.util.find_spec("llama_cpp") is not None  # the llama.cpp checks (the test extra)
    text = text_reference(model_dir, weights_dir if adapter else None) if checking else None
    image = image_reference(model_dir) if checking and mmproj else None
    report = {}
    for quantization in quantizations:
        folder = out_dir / quantization
        folder.mkdir()
        gguf_file = folder / (BASE_GGUF_FILE if adapter else GGUF_FILE)
        write_quantized(weights_dir, gguf_file, quantization, name)
        lora_file = folder / ADAPTER_GGUF_FILE if adapter else None
        if lora_file:
            write_lora_gguf(model_dir, weights_dir, lora_file)
        (folder / MODELFILE).write_text(modelfile(model_dir, weights_dir, gguf_file.name, lora_file and lora_file.name,
                                                  mmproj and f"../{mmproj.name}", enable_thinking))
        report[quantization] = {
            "size_mb": round(gguf_file.stat().st_size / 2**20, 3),
            **read_back(gguf_file, weights_dir),
            **({"adapter_size_mb": round(lora_file.stat().st_size / 2**20, 3)} if lora_file else {}),
            "generation_check": generation_check(gguf_file, text, lora_file) if checking else NOT_CHECKED,
            **({"mmproj_size_mb": round(mmproj.stat().st_size / 2**20, 3),
                "image_check": vision_check(gguf_file, mmproj, image) if checking else NOT_CHECKED} if mmproj else {}),
        }
    return report


NOT_CHECKED = "skipped: llama-cpp-python not installed"


def write_quantized(model_dir: Path, gguf_file: Path, quantization: str, name: str) -> None:
    """The GGUF file of `model_dir` (general.name `name`) in `quantization`: written here, or for k-quants an
    f16 file through llama.cpp's quantizer."""
    if quantization in PYTHON_QUANTIZATIONS:
        write_gguf(model_dir, gguf_file, quantization, name)
        return
    f16_file = gguf_file.with_suffix(".f16.gguf")
    write_gguf(model_dir, f16_file, "f16", name)
    done = subprocess.run([shutil.which("llama-quantize"), str(f16_file), str(gguf_file), quantization.upper()],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SlothlineError(f"llama-quantize failed for {quantization}:\n{done.stderr[-2000:]}")
    f16_file.unlink()


CHUNK_BYTES = 64 * 2**20  # source rows converted at a time: peak memory stays near the largest tensor's output


def write_gguf(model_dir: Path, out_file: Path, quantization: str, name: str | None = None) -> None:
    """Convert the Hugging Face checkpoint in `model_dir` to one GGUF file, streaming: the tensor infos first
    (shapes and types are known from the safetensors headers), then each tensor read from the memory-mapped
    shards a block of rows at a time, converted into its output buffer and written, so host memory holds
    one converted tensor at a time, never the model."""
    import gguf
    from transformers import AutoTokenizer

    config = checkpoint_config(model_dir)
    check_exportable(model_dir, config)
    config = text_config(config)
    recipe = family(config["model_type"]).gguf
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[recipe.arch.upper()], config["num_hidden_layers"])
    plan = [(shard, hf_name, gguf_name(names, text_name, model_dir), shape, output_type(shape, quantization))
            for shard, hf_name, text_name, shape in language_model_tensors(model_dir, config)]
    extra = computed_tensors(config)
    writer = gguf.GGUFWriter(str(out_file), recipe.arch)
    writer.add_name(name or model_dir.name)  # llama.cpp keys some tokenizer rules on it (Phi-3's stripped turns)
    write_hyperparameters(writer, config, quantization, recipe)
    write_vocab(writer, tokenizer, model_dir, config["vocab_size"])
    for _, _, name, shape, kind in plan:
        stored_shape, dtype = stored_as(shape, kind)
        writer.add_tensor_info(name, stored_shape, dtype, int(np.prod(stored_shape)) * dtype.itemsize, raw_dtype=kind)
    for name, data in extra.items():
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    permuted = lambda hf_name: recipe.permute_rotary and hf_name.endswith(("q_proj.weight", "k_proj.weight"))
    for shard, hf_name, _, shape, kind in plan:
        heads = config["num_attention_heads"] if "q_proj" in hf_name else config["num_key_value_heads"]
        shift = recipe.norm_shift if hf_name.endswith("norm.weight") else 0.0
        writer.write_tensor_data(converted(shard, hf_name, shape, kind, heads if permuted(hf_name) else None, shift))
    for data in extra.values():
        writer.write_tensor_data(data)
    writer.close()


def computed_tensors(config: dict) -> dict[str, np.ndarray]:
    """Tensors llama.cpp needs that the checkpoint computes at load time: Llama 3.1's RoPE frequency factors
    (`rope_freqs`, as llama.cpp's converter computes them from the rope_type llama3 parameters)."""
    import gguf

    rope = rope_of(config, "full_attention")
    if rope.get("rope_type") != "llama3":
        return {}
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    frequencies = 1.0 / (rope.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    context = rope.get("original_max_position_embeddings", 8192)
    wavelengths = 2 * np.pi / frequencies
    smooth = (context / wavelengths - low) / (high - low)
    factors = np.where(wavelengths < context / high, 1.0,
                       np.where(wavelengths > context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return {f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}.weight": factors.astype(np.float32)}


def write_lora_gguf(adapter_dir: Path, base_dir: Path, out_file: Path) -> None:
    """The PEFT LoRA adapter in `adapter_dir` as a GGUF adapter that llama.cpp applies to the GGUF of its base
    model (`--lora`, Ollama's ADAPTER): each target's A and B under the base tensor's GGUF name (`.lora_a`,
    `.lora_b`; B's rows permuted where the base's q/k rows are) and the alpha that makes llama.cpp's scale
    alpha/r PEFT's (alpha/sqrt(r) with rsLoRA), in float32, as llama.cpp's convert_lora_to_gguf writes it."""
    import gguf
    from safetensors import safe_open

    config = text_config(checkpoint_config(base_dir))
    settings = json.loads((adapter_dir / "adapter_config.json").read_text())
    problem = lora_gguf_refusal(settings)
    if problem:
        raise SlothlineError(f"{adapter_dir}: {problem}")
    recipe = family(config["model_type"]).gguf
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[recipe.arch.upper()], config["num_hidden_layers"])
    alpha = settings["lora_alpha"] * (math.sqrt(settings["r"]) if settings.get("use_rslora") else 1.0)
    writer = gguf.GGUFWriter(str(out_file), recipe.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        for name in sorted(f.keys()):  # ...q_proj.lora_A.weight before ...q_proj.lora_B.weight
            layer, part = name.removeprefix("base_model.model.").rsplit(".lora_", 1)
            data = f.get_tensor(name).float().numpy()
            if part == "B.weight" and recipe.permute_rotary and layer.endswith(("q_proj", "k_proj")):
                data = permute_rotary(data, config["num_attention_heads" if "q_proj" in layer else "num_key_value_heads"])
            writer.add_tensor(f"{gguf_name(names, layer + '.weight', adapter_dir)}.lora_{part[0].lower()}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def language_model_tensors(model_dir: Path, config: dict):
    """(shard, name, name as in a text-only checkpoint, shape) of the language model's tensors: a vision-language
    checkpoint's under its recipe's `text_prefix` (the vision encoder goes to the mmproj file), without an
    output layer tied to the embeddings."""
    prefix = family(config["model_type"]).gguf.text_prefix
    for shard, name, shape in checkpoint_tensors(model_dir):
        if config.get("tie_word_embeddings") and name == "lm_head.weight":
            continue
        if prefix and not name.startswith(prefix) and name != "lm_head.weight":
            continue
        yield shard, name, name.replace(prefix, "model.", 1) if prefix else name, shape


def gguf_name(names, hf_name: str, model_dir: Path) -> str:
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise SlothlineError(f"export: no GGUF name for tensor {hf_name!r} of {model_dir}")
    return name


def output_type(shape: tuple, quantization: str):
    """The GGUF type a tensor of `shape` is written in: norms and other 1-D tensors stay float32, as llama.cpp's
    converter keeps them; Q8_0 needs rows of whole 32-value blocks (f16 otherwise)."""
    import gguf

    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    kind = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0}[quantization]
    if kind == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32:
        return gguf.GGMLQuantizationType.F16
    return kind


def converted(shard: Path, hf_name: str, shape: tuple, kind, rotary_heads: int | None, shift: float = 0.0) -> np.ndarray:
    """One tensor in its GGUF type, converted from float32 (plus `shift`) a block of rows at a time into the
    output buffer (a q/k projection whose rotary rows are permuted is converted whole). The shard is mapped
    for each block alone, so the pages read do not stay in this process's memory."""
    from safetensors import safe_open

    def rows(start: int | None = None, stop: int | None = None) -> np.ndarray:
        with safe_open(shard, "pt") as f:
            block = f.get_slice(hf_name)[start:stop].float().numpy()
        return block + np.float32(shift) if shift else block  # a shifted copy only where there is a shift

    if rotary_heads:
        return encode_rows(permute_rotary(rows(), rotary_heads), kind)
    out = np.empty(*stored_as(shape, kind))
    step = max(1, CHUNK_BYTES // (4 * int(np.prod(shape[1:]))))
    for start in range(0, shape[0], step):
        out[start : start + step] = encode_rows(rows(start, start + step), kind)
    return out


def stored_as(shape: tuple, kind) -> tuple[tuple, np.dtype]:
    """The (shape, numpy type) a tensor of `shape` is stored as in GGUF type `kind`: float32 and float16 as
    such, block types (bf16, q8_0) as rows of bytes."""
    import gguf

    floats = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
    if kind in floats:
        return tuple(shape), np.dtype(floats[kind])
    return tuple(gguf.quants.quant_shape_to_byte_shape(shape, kind)), np.dtype(np.uint8)


def encode_rows(data: np.ndarray, kind) -> np.ndarray:
    """Rows of float32 data in GGUF type `kind` (every type written here encodes each row alone)."""
    import gguf

    _, dtype = stored_as(data.shape, kind)
    return data.astype(dtype) if dtype != np.uint8 else gguf.quants.quantize(data, kind)


def check_exportable(model_dir: Path, config: dict) -> None:
    """Refuse, with the reason, what this converter would write wrongly (check_params refused the rest before
    training, from the base model)."""
    if config.get("quantization_config"):
        raise SlothlineError(f"{model_dir}: quantized (bitsandbytes) weights; GGUF export needs merge.save_method: merged_16bit")
    tokenizer_file = model_dir / "tokenizer.json"
    problem = gguf_refusal(config, json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else None)
    if problem:
        raise SlothlineError(f"export.formats: gguf: {problem}")


def write_hyperparameters(writer, config: dict, quantization: str, recipe) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = rope_of(config, "full_attention")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 1.0) * head_dim))
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    if recipe.sliding_window and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
        writer.add_sliding_window_pattern([layer == "sliding_attention" for layer in config["layer_types"]])
        writer.add_rope_freq_base_swa(rope_of(config, "sliding_attention").get("rope_theta", 10000.0))
    if "mrope_section" in rope:  # Qwen-VL's multimodal RoPE: rotary pairs for time, height and width
        writer.add_rope_dimension_sections([*rope["mrope_section"], 0, 0, 0, 0][:4])
    if deepstack := config.get("vision_config", {}).get("deepstack_visual_indexes"):
        writer.add_num_deepstack_layers(len(deepstack))
    if recipe.original_context:
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings")
                                             or config["max_position_embeddings"])
        writer.add_sliding_window(config.get("sliding_window") or 0)  # as llama.cpp's converter writes it
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantization])


def permute_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    """Llama's q/k projection rows, reordered from Hugging Face's rotary layout to llama.cpp's."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def read_back(gguf_file: Path, model_dir: Path) -> dict:
    """Check a written file with gguf's reader: architecture, tensor count and shapes, tokenizer metadata."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_file))
    fields = reader.fields
    field_text = lambda key: bytes(fields[key].parts[fields[key].data[0]]).decode()
    config = text_config(checkpoint_config(model_dir))
    expected = {name: shape for _, name, _, shape in language_model_tensors(model_dir, config)}
    expected.update({name: data.shape for name, data in computed_tensors(config).items()})
    problems = []
    if field_text("general.architecture") != family(config["model_type"]).gguf.arch:
        problems.append("architecture")
    if len(reader.tensors) != len(expected):
        problems.append(f"{len(reader.tensors)} tensors, expected {len(expected)}")
    written = sorted(tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors)
    if written != sorted(expected.values()):
        problems.append("tensor shapes differ from the checkpoint's")
    ranking = "tokenizer.ggml.merges" if field_text("tokenizer.ggml.model") == "gpt2" else "tokenizer.ggml.scores"
    for key in ("tokenizer.ggml.tokens", ranking, "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        if key not in fields:
            problems.append(f"missing {key}")
    if len(fields["tokenizer.ggml.tokens"].data) != config["vocab_size"]:
        problems.append("vocabulary size")
    if problems:
        raise SlothlineError(f"{gguf_file}: failed verification: {'; '.join(problems)}")
    return {"tensors": len(reader.tensors), "architecture": field_text("general.architecture"),
            "vocab_size": len(fields["tokenizer.ggml.tokens"].data)}


@dataclass(frozen=True)
class TextReference:
    """What transformers answers the check's chat prompt with, computed once for all of an export's files."""
    tokenizer: object
    prompt: str
    prompt_ids: list[int]
    expected: list[int]  # transformers' greedy tokens after the prompt


def text_reference(model_dir: Path, base_dir: Path | None = None, tokens: int = 16) -> TextReference:
    """Transformers on the merged model in `model_dir` (or on the base model in `base_dir` with the adapter in
    `model_dir` merged): its greedy tokens after a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello to Anna."}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if base_dir:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    else:  # a vision-language model answers the text prompt with its language model
        auto = AutoModelForImageTextToText if "vision_config" in checkpoint_config(model_dir) else AutoModelForCausalLM
        model = auto.from_pretrained(model_dir, dtype=torch.float32)
    return TextReference(tokenizer, prompt, prompt_ids, greedy_tokens(model, prompt_ids, tokens))


def generation_check(gguf_file: Path, reference: TextReference, lora_file: Path | None = None) -> str:
    """llama.cpp (llama-cpp-python; applying `lora_file` to `gguf_file` where given) against transformers'
    `reference`: the tokens of a probe text (digits, runs of spaces, accents, CJK, emoji) must be the model
    tokenizer's; the greedy tokens generated from the reference's prompt tokens are compared, and where
    llama.cpp's own tokens of that prompt differ, the result says from which token."""
    import llama_cpp

    tokenizer, prompt, prompt_ids, expected = (reference.tokenizer, reference.prompt, reference.prompt_ids,
                                               reference.expected)
    llm = load_without_weight_repacking(llama_cpp, gguf_file, lora_file)
    if llm.tokenize(PROBE_TEXT.encode(), add_bos=False, special=True) != tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise SlothlineError(f"{gguf_file}: llama.cpp tokenizes a probe text differently from the model's tokenizer")
    own = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    produced = []
    for token in llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True):
        if len(produced) == len(expected):
            break
        produced.append(token)
    matching = next((i for i, (a, b) in enumerate(zip(produced, expected)) if a != b), min(len(produced), len(expected)))
    if own == prompt_ids:
        return f"{matching} of {len(expected)} greedy tokens match transformers"
    first = next((i for i, (a, b) in enumerate(zip(own, prompt_ids)) if a != b), min(len(own), len(prompt_ids)))
    return (f"{matching} of {len(expected)} greedy tokens match transformers, from transformers' prompt tokens: "
            f"llama.cpp's own tokens of the chat prompt differ from token {first} (SentencePiece models whose "
            "tokenizer adds no space after special tokens, where llama.cpp does)")


def greedy_tokens(model, prompt_ids: list[int], count: int) -> list[int]:
    """The `count` tokens transformers picks greedily after the prompt, on past any stop token (as llama.cpp's
    generator goes)."""
    import torch

    generated, inputs, cache = [], torch.tensor([prompt_ids]), None
    with torch.inference_mode():
        for _ in range(count):
            step = model(input_ids=inputs, past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            generated.append(int(step.logits[0, -1].argmax()))
            inputs = torch.tensor([generated[-1:]])
    return generated
