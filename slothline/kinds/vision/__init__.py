"""Vision-language models (Qwen3-VL): chat records whose user turns hold images (stored content-addressed
under the prepared data), the model's processor, loss on the assistant's answers only, batched generation
with images, and text metrics plus the loss on the reference answers."""

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from slothline.artifacts import IMAGES_SUBDIR, PREPARED_DIR, THUMBNAILS_DIR
from slothline.errors import SlothlineError
from slothline.families import FAMILIES, family
from slothline.kinds import _generative
from slothline.kinds._generative.chat import render, token_lengths, turn_markers
from slothline.kinds._generative.stops import check_turn_end, model_stop_tokens, stop_ids
from slothline.kinds._generative.tokens import literal_spans
from slothline.data.formats import to_messages
from slothline.kinds.vision.formats import CONVERTERS, image_parts
from slothline.errors import RowError
from slothline.kinds.vision.images import (aspect_ratio_limit, locate, open_rgb, quoted, size_statistics, store_image,
                                           thumbnail)
from slothline.export import check_gguf
from slothline.kinds.vision.params import Params  # noqa: F401 (the protocol's name)

NAME = "vision"
AUTO_CLASS = "AutoModelForImageTextToText"
PEFT_TASK_TYPE = "CAUSAL_LM"
FORMATS = tuple(CONVERTERS)
EXPORT_FORMATS = ("gguf",)  # llama.cpp's text GGUF of the language model and mmproj GGUF of the vision encoder
VAL_METRICS = ("loss",)
STRATIFY_BY = None
PREFERENCE = None  # no preference tuning for these models

IMAGE_SOURCES = "image_sources"  # prepare-time field: stored image path -> where its bytes come from

# Unsloth's get_peft_regex: a LoRA target lies in a selected tower and, below it, in a selected block kind.
VISION_TAGS = ("vision", "image", "visual", "patch")
LANGUAGE_TAGS = ("language", "text")
ATTENTION_TAGS = ("self_attn", "attention", "attn", "mixer")
MLP_TAGS = ("mlp", "feed_forward", "ffn", "dense", "mixer")


def check(params) -> None:
    """A model of a family the kind knows; what GGUF export can write: the model's family and tokenizer, and
    merged weights (a GGUF adapter holds the language model's LoRA alone, not the vision encoder's); the KV
    cache; response-only training on a chat template of a known format."""
    from slothline.models import model_config

    model_type = model_config(params.model.name, params.model.revision).get("model_type")
    if family(model_type).kind != "vision":
        known = ", ".join(name for name, record in FAMILIES.items() if record.kind == "vision")
        raise SlothlineError(f"model.name: a {model_type} model; the vision kind trains the families whose processors, "
                             f"image tokens and LoRA layers it knows ({known}): use a model of one of them")
    check_gguf(params)
    _generative.check_kv_cache(params)
    if "gguf" in params.export.formats and params.merge.save_method == "lora":
        raise SlothlineError("export.formats: gguf of a vision model needs merge.save_method: merged_16bit (its "
                             "vision encoder goes to the mmproj file merged), or export.formats: []")
    _generative.check_turn_markers(load_processor, params)


def load_processor(source: str, revision: str | None):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise SlothlineError(f"model.name: cannot load the processor of {source!r} ({err.__class__.__name__}: "
                             f"{err}); use a vision model directory, a hub id reachable from here, or "
                             "builtin:tiny-qwen3-vl") from None
    if getattr(processor, "image_processor", None) is None:
        raise SlothlineError(f"model.name: {source} has no image processor; a vision model needs one, or use "
                             "kind: causal_lm for a text model")
    return processor


def to_record(row: dict, source, params, processor) -> tuple[dict, dict]:
    """Canonical `messages` whose image parts point at the prepared copies of the images, and the rendered
    `text`, `prompt` and `reference` (as for a causal LM, images as the template's image tokens)."""
    data = params.data
    messages = to_messages(row, source.format, data.system_prompt, CONVERTERS)
    refuse_spelled_placeholder(messages, processor)
    sources = {}
    max_ratio = aspect_ratio_limit(processor)
    for part in image_parts(messages):
        reference = locate(part["image"], Path(source.path).parent)
        stored = store_image(reference, data.image_min_pixels, data.image_max_pixels, part["image"], max_ratio)
        part["image"] = str(PREPARED_DIR / IMAGES_SUBDIR / stored.name)
        sources[part["image"]] = reference
    stops = model_stop_tokens(processor, params.model.name, params.model.revision)
    return {"messages": messages}, {**render(messages, processor, "chat", data.enable_thinking, stops),
                                    IMAGE_SOURCES: sources}


def refuse_spelled_placeholder(messages: list[dict], processor) -> None:
    """A RowError for message text that spells the processor's image placeholder (`<|image_pad|>` for Qwen-VL):
    the processor would take it for a picture and find none for it, failing the batch the row is in (in training,
    an error the data loader reads as the end of the epoch)."""
    placeholder = getattr(processor, "image_token", None)
    for message in messages:
        content = message["content"]
        texts = [content] if isinstance(content, str) else [part.get("text") or "" for part in content
                                                             if part.get("type") == "text"]
        if placeholder and any(placeholder in text for text in texts):
            raise RowError(f"a {message['role']} message's text spells {placeholder!r}, the model's image placeholder, "
                           "which the processor would take for a picture; remove it from the text (a picture goes in "
                           "as an image part)")


def finish_splits(splits: dict[str, list[dict]], processor, params, out_dir: Path) -> dict:
    """Write the rows' images into `out_dir`; drop train and val rows longer than model.max_seq_length (their
    image tokens included: cutting a row would cut its image or answer). Returns image and token statistics
    per split, taken before that drop. An image that fails here (changed since it was read, or refused by the
    processor) is a SlothlineError naming the image and its row's source."""
    from slothline.models import model_config

    check_turn_end(processor)
    sizes, references = write_images(splits, out_dir / IMAGES_SUBDIR, params.data, aspect_ratio_limit(processor))
    rule = family(model_config(params.model.name, params.model.revision).get("model_type")).image_tokens
    image_tokens = partial(expanded_tokens, processor, rule, sizes, references)
    lengths = {name: token_lengths(rows, processor, image_tokens) for name, rows in splits.items()}
    max_length = params.model.max_seq_length
    keep = lambda length, start: length <= max_length
    sizes_of_train = [length for length, _ in lengths["train"]] or [0]
    none_kept = (f"model.max_seq_length: {max_length} tokens hold none of the {len(lengths['train'])} train rows "
                 f"(they take {min(sizes_of_train)} to {max(sizes_of_train)} tokens, images included); raise "
                 "model.max_seq_length, or lower data.image_max_pixels")
    tokens = _generative.finish_lengths(splits, lengths, max_length, keep, none_kept)
    images = {name: size_statistics([sizes[path] for row in rows for path in image_paths(row)])
              for name, rows in splits.items()}
    return {"tokens": tokens, "images": images}


def write_images(splits: dict[str, list[dict]], images_dir: Path, data, max_ratio: float | None
                 ) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Store every image the rows use (once each) and drop the rows' IMAGE_SOURCES; returns (width, height) and
    where the image was read from, by stored path."""
    images_dir.mkdir(parents=True, exist_ok=True)
    sizes, references = {}, {}
    for rows in splits.values():
        for row in rows:
            for path, reference in row.pop(IMAGE_SOURCES).items():
                if path not in sizes:
                    try:
                        stored = store_image(reference, data.image_min_pixels, data.image_max_pixels, None, max_ratio)
                    except RowError as err:
                        raise SlothlineError(f"{err} (in a row of source {row['source']!r}; the file changed after "
                                             "prepare first read it: run prepare again)") from None
                    (images_dir / stored.name).write_bytes(stored.data)
                    sizes[path], references[path] = (stored.width, stored.height), quoted(reference)
    return sizes, references


def expanded_tokens(processor, rule, sizes: dict[str, tuple[int, int]], references: dict[str, str], row: dict) -> int:
    """The tokens the processor adds to the row's rendered text by expanding each image's one placeholder:
    the family's image-token `rule`, else the processor itself run on blank images of the same sizes."""
    refused = partial(processed, sizes=sizes, references=references, row=row)
    if rule:
        return sum(refused(lambda: rule(processor, *sizes[path]), [path]) - 1 for path in image_paths(row))
    from PIL import Image

    paths = image_paths(row)
    pictures = [Image.new("RGB", sizes[path]) for path in paths]
    expanded = refused(lambda: processor(text=[row["text"]], images=pictures or None,
                                         add_special_tokens=False)["input_ids"][0], paths)
    return len(expanded) - len(processor.tokenizer(row["text"], add_special_tokens=False)["input_ids"])


def processed(call, paths: list[str], sizes: dict[str, tuple[int, int]], references: dict[str, str], row: dict):
    """call(), which runs the processor on the images at `paths`; its refusal, whatever the exception, is a
    SlothlineError naming the images, their sizes and the row's source."""
    try:
        return call()
    except Exception as err:
        images = ", ".join(f"{references[path]!r} ({sizes[path][0]}x{sizes[path][1]})" for path in paths)
        raise SlothlineError(
            f"image{'s' if len(paths) > 1 else ''} {images} in a row of source {row['source']!r}: the model's image "
            f"processor refuses it ({err.__class__.__name__}: {err}); crop, pad or resize the image to a shape the "
            "model takes, or drop the row") from err


def labels(rows: list[dict]) -> None:
    """No classes: generated text."""
    return None


def lora_extras(params, model) -> dict:
    """`lora.target_modules` limited by the lora.finetune_* flags, as one regex for both backends (the one
    Unsloth's get_peft_regex writes)."""
    lora = params.lora
    towers = (VISION_TAGS if lora.finetune_vision_layers else ()) + (LANGUAGE_TAGS if lora.finetune_language_layers else ())
    blocks = (ATTENTION_TAGS if lora.finetune_attention_modules else ()) + (MLP_TAGS if lora.finetune_mlp_modules else ())
    alternatives = lambda names: "|".join(re.escape(name) for name in dict.fromkeys(names))
    targets = lora.target_modules or family(model.config.model_type).lora_targets
    if not targets:
        raise SlothlineError(f"lora.target_modules: null takes the default layers of the model's family, but "
                             f"{model.config.model_type} has none here; list the layers to train")
    return {"target_modules": rf".*?(?:{alternatives(towers)}).*?(?:{alternatives(blocks)}).*?\.(?:{alternatives(targets)})"}


def build_trainer(backend, runtime, params, model, processor, train_rows: list[dict], val_rows: list[dict],
                  output_dir: str, callbacks: list):
    """TRL's SFTTrainer with a collator that processes each batch's texts and images (the backend's own, else
    the answer-masking one), as Unsloth's notebooks configure it."""
    from slothline.training import sft_config, sft_trainer_class

    markers = turn_markers([r["text"] for r in train_rows]) if params.train.train_on_responses_only else None
    collator = (backend.vision_collator(model, processor, markers)
                or _generative.AnswerCollator(processor, markers, load_images, stop_ids(processor, model.generation_config)))
    config = sft_config(backend, runtime, params, output_dir, bool(val_rows), VAL_METRICS[0], packing=False,
                        remove_unused_columns=False, dataset_text_field="",
                        dataset_kwargs={"skip_prepare_dataset": True})
    return sft_trainer_class(runtime)(
        model=model,
        args=config,
        data_collator=collator,
        train_dataset=training_rows(train_rows),
        eval_dataset=training_rows(val_rows) if val_rows else None,
        processing_class=processor,
        callbacks=callbacks,
    )


def loss_coverage(model, processor, params, train_rows: list[dict], val_rows: list[dict]) -> dict:
    """The tokens the losses cover (rows are whole: prepare drops those longer than model.max_seq_length)."""
    return _generative.loss_coverage(processor, model, params, {"train": train_rows, "val": val_rows}, None)


def training_rows(rows: list[dict]):
    """What the collators read, as a `datasets.Dataset`: the rendered `text`, the `messages` (Unsloth's
    collator) and the image paths. Every content becomes a list of parts with the same keys, as Arrow needs
    one type per column (Unsloth's collator drops the parts' None values again)."""
    from datasets import Dataset

    as_parts = lambda content: [{"type": "text", "text": content}] if isinstance(content, str) else content
    part = lambda values: {"type": values["type"], "text": values.get("text"), "image": values.get("image")}
    return Dataset.from_list([{
        "text": row["text"],
        "messages": [{"role": m["role"], "content": [part(p) for p in as_parts(m["content"])]} for m in row["messages"]],
        "images": image_paths(row),
        "literals": row.get("literals"),
    } for row in rows])


def image_paths(row: dict) -> list[str]:
    return [part["image"] for part in image_parts(row["messages"])]


def load_images(row: dict) -> list:
    return [open_rgb(path) for path in image_paths(row)]


class RowPictures(Sequence):
    """Each row's pictures by the row's index, read from disk when asked for: generation reads a batch's
    pictures as it forms the batch, so a test split of photos is never held in memory at once."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list:
        return load_images(self.rows[index])


def predict(model, processor, rows: list[dict], params) -> list[str]:
    return answers(model, processor, rows, params)


def answers(model, processor, rows: list[dict], params, how=None) -> list[str]:
    """Generated answers to the rows' prompts and images (batched, left-padded, decoded as `evaluate.*` ask),
    as the generation plan `how` says (`generation.plan` decides when None)."""
    from slothline.kinds._generative.generation import decoding, generate

    settings = params.evaluate
    return generate(model, processor, [r["prompt"] for r in rows], settings, decoding(settings, model.generation_config),
                    desc="answers", images=RowPictures(rows),
                    literals=[literal_spans(r, "prompt") for r in rows], how=how)


def evaluate(model, processor, rows: list[dict], params, base, media_dir: Path):
    """As a causal LM's; each sample shows a thumbnail of its (first) image, written into `media_dir`
    (THUMBNAILS_DIR once evaluate is done)."""

    def sample(row, answers):
        cell = ""
        if image_paths(row):
            thumbnail(Path(image_paths(row)[0]), media_dir / f"{row['id']}.png")
            cell = f'<img src="{THUMBNAILS_DIR.name}/{row["id"]}.png" alt="image">'
        return {"id": row["id"], "image": cell, "prompt": _generative.question(row), "reference": row["reference"],
                **answers}

    return _generative.evaluate(answers, model, processor, rows, params, base, sample, load_images)


def export(formats: list[str], model_dir, out_dir, params) -> dict:
    from slothline.export.gguf import export_gguf

    return export_gguf(model_dir, out_dir, params.export.gguf_quantization, params.data.enable_thinking)
