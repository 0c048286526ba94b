"""The vision encoder of a vision-language model as llama.cpp's `mmproj` GGUF (beside the text GGUF of its
language model), and the check that llama.cpp's multimodal library (mtmd) answers an image question as
transformers does. Tensor names and settings follow llama.cpp's converter for Qwen3-VL."""

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slothline.errors import SlothlineError
from slothline.export import text_config
from slothline.export.checkpoint import checkpoint_config, checkpoint_tensors, load_without_weight_repacking
from slothline.families import family

MMPROJ_FILE = "mmproj.gguf"
IMAGE_QUESTION = "What colour is the circle?"


def write_mmproj(model_dir: Path, out_file: Path) -> None:
    """The vision encoder and its merger to the language model, in float16 (norms and biases float32), one
    tensor at a time."""
    import gguf

    config = checkpoint_config(model_dir)
    vision, text = config["vision_config"], text_config(config)
    image = image_processor_config(model_dir)
    deepstack = vision.get("deepstack_visual_indexes", [])
    writer = gguf.GGUFWriter(str(out_file), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(family(config["model_type"]).gguf.mmproj)
    writer.add_vision_projection_dim(text["hidden_size"])
    writer.add_vision_image_size(int(vision["num_position_embeddings"] ** 0.5 * vision["patch_size"]))
    writer.add_vision_patch_size(vision["patch_size"])
    writer.add_vision_embedding_length(vision["hidden_size"])
    writer.add_vision_feed_forward_length(vision["intermediate_size"])
    writer.add_vision_block_count(vision["depth"])
    writer.add_vision_head_count(vision["num_heads"])
    writer.add_vision_image_mean(image["image_mean"])
    writer.add_vision_image_std(image["image_std"])
    writer.add_vision_use_gelu(True)
    writer.add_vision_spatial_merge_size(vision["spatial_merge_size"])
    writer.add_vision_attention_layernorm_eps(text.get("rms_norm_eps", 1e-6))
    if deepstack:
        writer.add_vision_is_deepstack_layers([i in deepstack for i in range(vision["depth"])])
    position = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.V_ENC_EMBD_POS]
    plan = [(name, load, shape, np.dtype(np.float32 if len(shape) == 1 or name.startswith(position) else np.float16))
            for name, load, shape in vision_tensors(model_dir, vision)]  # llama.cpp interpolates positions in float32
    for name, _, shape, dtype in plan:
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, load, _, dtype in plan:
        writer.write_tensor_data(load().astype(dtype))
    writer.close()


def vision_tensors(model_dir: Path, vision: dict):
    """(GGUF name, loader, shape) of each vision tensor: the patch embedding's two time steps as two 2-D
    convolutions, the merger as llama.cpp's projector, deepstack mergers under the layer they read."""
    import gguf

    if vision.get("temporal_patch_size", 2) != 2:
        raise SlothlineError("mmproj: llama.cpp's Qwen-VL encoder takes a temporal patch of 2 frames")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, vision["depth"])
    tensor = lambda kind, bid=None: gguf.TENSOR_NAMES[kind].format(bid=bid)
    for shard, hf_name, shape in checkpoint_tensors(model_dir):
        if not hf_name.startswith("model.visual."):
            continue
        name = hf_name.removeprefix("model.")
        load = lambda shard=shard, hf_name=hf_name: read_tensor(shard, hf_name)
        part, suffix = name.rsplit(".", 1)  # suffix: weight | bias
        if part == "visual.patch_embed.proj" and suffix == "weight":
            for step, extra in ((0, ""), (1, ".1")):
                yield (f"{tensor(gguf.MODEL_TENSOR.V_ENC_EMBD_PATCH)}.weight{extra}",
                       lambda load=load, step=step: load()[:, :, step], (shape[0], shape[1], *shape[3:]))
        elif part.startswith("visual.deepstack_merger_list."):
            index, layer = part.split(".")[2:4]
            kind = {"norm": gguf.MODEL_TENSOR.V_DS_NORM, "linear_fc1": gguf.MODEL_TENSOR.V_DS_FC1,
                    "linear_fc2": gguf.MODEL_TENSOR.V_DS_FC2}[layer]
            yield f"{tensor(kind, vision['deepstack_visual_indexes'][int(index)])}.{suffix}", load, tuple(shape)
        elif part.startswith("visual.merger."):
            layer = part.split(".")[2]
            target = {"linear_fc1": tensor(gguf.MODEL_TENSOR.V_MMPROJ, 0), "linear_fc2": tensor(gguf.MODEL_TENSOR.V_MMPROJ, 2),
                      "norm": tensor(gguf.MODEL_TENSOR.V_POST_NORM)}[layer]
            yield f"{target}.{suffix}", load, tuple(shape)
        else:
            mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                raise SlothlineError(f"mmproj: no GGUF name for tensor {hf_name!r} of {model_dir}")
            yield mapped, load, tuple(shape)


def read_tensor(shard: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(shard, "pt") as f:
        return f.get_tensor(name).float().numpy()


def image_processor_config(model_dir: Path) -> dict:
    """The image processor's settings (processor_config.json, or the older preprocessor_config.json)."""
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = model_dir / name
        if path.is_file():
            settings = json.loads(path.read_text())
            return settings[key] if key else settings
    raise SlothlineError(f"{model_dir}: no processor_config.json or preprocessor_config.json (the image settings)")


def check_image(width: int = 128, height: int = 96):
    """A test picture whose size no processor resizes (a multiple of 32 pixels on each side, within the image
    sizes transformers' and llama.cpp's Qwen-VL processors keep as they are)."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (width, height), (235, 225, 200))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((12, 10, 70, 68), fill=(200, 40, 40))
    draw.rectangle((76, 30, 120, 86), fill=(30, 90, 200))
    return picture


@dataclass(frozen=True)
class ImageReference:
    """What transformers answers the check's image question with, computed once for all of an export's files."""
    prompt: str
    picture: object
    expected: list[int]  # transformers' greedy tokens after the prompt


def image_reference(model_dir: Path, tokens: int = 16) -> ImageReference:
    """Transformers on the merged vision-language model: its greedy tokens after an image question."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    picture = check_image()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.generation_config.eos_token_id = None  # on past any stop token, as llama.cpp's loop in vision_check goes
    inputs = processor(text=[prompt], images=[picture], return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    return ImageReference(prompt, picture, expected)


def vision_check(text_gguf: Path, mmproj_file: Path, reference: ImageReference) -> str:
    """The reference's image question answered by llama.cpp (the text GGUF with the mmproj, through mtmd, via
    llama-cpp-python): how many of transformers' greedy tokens it generates."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    prompt, picture, expected = reference.prompt, reference.picture, reference.expected
    llm = load_without_weight_repacking(llama_cpp, text_gguf)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.print_timings = False, False
    context = mtmd.mtmd_init_from_file(str(mmproj_file).encode(), llm.model, params)
    if context is None:
        raise SlothlineError(f"{mmproj_file}: llama.cpp's multimodal library cannot load it")
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    data = encoded.getvalue()
    bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(context, (llama_cpp.ctypes.c_ubyte * len(data)).from_buffer_copy(data),
                                                   len(data), False)
    image_part = "<|vision_start|><|image_pad|><|vision_end|>"
    text = mtmd.mtmd_input_text()
    text_bytes = prompt.replace(image_part, mtmd.mtmd_default_marker().decode()).encode()
    text.text, text.text_len, text.add_special, text.parse_special = text_bytes, len(text_bytes), False, True
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        if mtmd.mtmd_tokenize(context, chunks, llama_cpp.ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1):
            raise SlothlineError(f"{mmproj_file}: llama.cpp's multimodal library cannot tokenize the image prompt")
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = llama_cpp.ctypes.c_size_t()
                pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, llama_cpp.ctypes.byref(count))
                llm.eval([pointer[j] for j in range(count.value)])
            else:
                position = llama_cpp.llama_pos(0)
                if mtmd.mtmd_helper_eval_chunk_single(context, llm._ctx.ctx, chunk, llm.n_tokens, 0, llm.n_batch,
                                                      False, llama_cpp.ctypes.byref(position)):
                    raise SlothlineError(f"{mmproj_file}: llama.cpp's multimodal library failed on the image")
                llm.n_tokens = position.value
        produced = []
        for _ in range(len(expected)):
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
            produced.append(int(last.argmax()))
            llm.eval(produced[-1:])
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_free(context)
    matching = next((i for i, (a, b) in enumerate(zip(produced, expected)) if a != b), len(expected))
    return f"{matching} of {len(expected)} greedy tokens match transformers"
