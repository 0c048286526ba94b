"""Vision-language models (Qwen3-VL): chat records whose user turns hold images, the model's processor,
loss on the assistant's answers only (Unsloth's vision collator on unsloth, `AnswerCollator` on hf),
batched generation with images, and the causal kind's text metrics plus the loss on the answers."""

import re
from pathlib import Path

import numpy as np

from stages.lib.artifacts import PREPARED_DIR, THUMBNAILS_DIR
from stages.lib.errors import SlothlineError
from stages.lib.formats import RowError, to_messages
from stages.lib.generate import generation_settings as evaluation_settings  # noqa: F401 (the protocol's name)
from stages.lib.kinds.causal_lm import confusion, labels, report_sections  # noqa: F401 (generated text: no classes)
from stages.lib.images import IMAGES_SUBDIR, locate, open_rgb, size_statistics, store_image, thumbnail
from stages.lib.params import VISION_LORA_FLAGS
from stages.lib.training import sft_config, sft_trainer_class
from stages.lib.templates import render, turn_markers
from stages.lib.vision_formats import CONVERTERS, image_parts

NAME = "vision"
AUTO_CLASS = "AutoModelForImageTextToText"
PEFT_TASK_TYPE = "CAUSAL_LM"
DATA_FORMATS = tuple(CONVERTERS)
VAL_METRICS = ("loss",)  # what the trainer measures on the val split (train.metric_for_best_model)
STRATIFY_BY = None
INAPPLICABLE_PARAMS = ("data.labels",)
EXPORT_FORMATS = ()  # llama.cpp's text GGUF + mmproj pair is not written: models/merged is the export

IMAGE_SOURCES = "image_sources"  # prepare-time field: stored image path -> where its bytes come from

# Unsloth's get_peft_regex: a LoRA target lies in a selected tower and, below it, in a selected block kind.
VISION_TAGS = ("vision", "image", "visual", "patch")
LANGUAGE_TAGS = ("language", "text")
ATTENTION_TAGS = ("self_attn", "attention", "attn", "mixer")
MLP_TAGS = ("mlp", "feed_forward", "ffn", "dense", "mixer")


def load_processor(source: str, revision: str | None):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise SlothlineError(f"model.name: cannot load the processor of {source!r} ({err.__class__.__name__}: {err}); "
                             "use a vision model directory, a hub id reachable from here, or builtin:tiny-qwen3-vl") from None
    if getattr(processor, "image_processor", None) is None:
        raise SlothlineError(f"model.name: {source} has no image processor; a vision model needs one "
                             "(model.kind: vision), or use model.kind: causal_lm for a text model")
    return processor


def to_record(row: dict, source, data, processor) -> tuple[dict, dict]:
    """Canonical `messages` whose image parts point at the prepared copies of the images, and the rendered
    `text`, `prompt` and `reference` (as for a causal LM, images as the template's image tokens)."""
    if source.template != "chat":
        raise SlothlineError(f"{source.path}: template {source.template} is for text models; vision rows use the "
                             "model's chat template (template: chat)")
    messages = to_messages(row, source.format, data.system_prompt, CONVERTERS)
    sources = {}
    for part in image_parts(messages):
        reference = locate(part["image"], Path(source.path).parent)
        stored = store_image(reference, data.image_min_pixels, data.image_max_pixels, part["image"])
        part["image"] = str(PREPARED_DIR / IMAGES_SUBDIR / stored.name)
        sources[part["image"]] = reference
    try:
        rendered = render(messages, processor, "chat", data.enable_thinking)
    except (TypeError, ValueError) as err:  # a template that cannot render this conversation
        raise RowError(f"the model's chat template cannot render this conversation ({err})") from None
    return {"messages": messages}, {**rendered, IMAGE_SOURCES: sources}


def finish_splits(splits: dict[str, list[dict]], processor, params, out_dir: Path) -> dict:
    """Write the rows' images into `out_dir`; drop train and val rows longer than model.max_seq_length
    (their image tokens included: cutting a row would cut its image or answer). Returns image and token
    statistics per split, taken before that drop."""
    sizes = write_images(splits, out_dir / IMAGES_SUBDIR, params.data)
    lengths = {name: [token_length(row, processor, sizes) for row in rows] for name, rows in splits.items()}
    max_length = params.model.max_seq_length
    dropped = {}
    for name in ("train", "val"):
        kept = [row for row, length in zip(splits[name], lengths[name]) if length <= max_length]
        dropped[name], splits[name] = len(splits[name]) - len(kept), kept
    if lengths["train"] and not splits["train"]:
        raise SlothlineError(f"model.max_seq_length: {max_length} tokens hold none of the {len(lengths['train'])} "
                             f"train rows (they take {min(lengths['train'])} to {max(lengths['train'])} tokens, "
                             "images included); raise model.max_seq_length, or lower data.image_max_pixels")
    tokens = {}
    for name, split_lengths in lengths.items():
        if split_lengths:
            counts = np.array(split_lengths)
            tokens[name] = {"mean": round(float(counts.mean()), 1), "p50": int(np.percentile(counts, 50)),
                            "p95": int(np.percentile(counts, 95)), "max": int(counts.max()),
                            "rows_dropped_too_long": dropped.get(name, 0)}
    images = {name: size_statistics([sizes[part["image"]] for row in rows for part in image_parts(row["messages"])])
              for name, rows in splits.items()}
    return {"tokens": tokens, "images": images}


def write_images(splits: dict[str, list[dict]], images_dir: Path, data) -> dict[str, tuple[int, int]]:
    """Store every image the rows use (once each) and drop the rows' IMAGE_SOURCES; returns (width, height) by path."""
    images_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for rows in splits.values():
        for row in rows:
            for path, reference in row.pop(IMAGE_SOURCES).items():
                if path not in sizes:
                    stored = store_image(reference, data.image_min_pixels, data.image_max_pixels)
                    (images_dir / stored.name).write_bytes(stored.data)
                    sizes[path] = (stored.width, stored.height)
    return sizes


def token_length(row: dict, processor, sizes: dict[str, tuple[int, int]]) -> int:
    """Tokens of the row's rendered text once the processor has expanded each image into its tokens."""
    text_tokens = len(processor.tokenizer(row["text"], add_special_tokens=False)["input_ids"])
    merge = processor.image_processor.merge_size ** 2
    image_tokens = [processor.image_processor.get_number_of_image_patches(height, width) // merge
                    for width, height in (sizes[part["image"]] for part in image_parts(row["messages"]))]
    return text_tokens + sum(count - 1 for count in image_tokens)  # each image's one placeholder becomes its tokens


def lora_kwargs(params, model, backend: str) -> dict:
    """`lora.target_modules` limited by the lora.finetune_* flags, as one regex for both backends (the one
    Unsloth's get_peft_regex writes); Unsloth also gets the flags themselves."""
    kwargs = {"target_modules": lora_target_regex(params.lora)}
    if backend == "unsloth":
        kwargs.update({name: getattr(params.lora, name) for name in VISION_LORA_FLAGS})
    return kwargs


def lora_target_regex(lora) -> str:
    """A regex (PEFT matches it against whole module names) for the `lora.target_modules` layers that lie in
    the towers (vision, language) and blocks (attention, MLP) the finetune flags select."""
    towers = (VISION_TAGS if lora.finetune_vision_layers else ()) + (LANGUAGE_TAGS if lora.finetune_language_layers else ())
    blocks = (ATTENTION_TAGS if lora.finetune_attention_modules else ()) + (MLP_TAGS if lora.finetune_mlp_modules else ())
    if not towers or not blocks:
        raise SlothlineError("lora.finetune_*: nothing left to train; set finetune_vision_layers or "
                             "finetune_language_layers, and finetune_attention_modules or finetune_mlp_modules, to true")
    alternatives = lambda names: "|".join(re.escape(name) for name in dict.fromkeys(names))
    return rf".*?(?:{alternatives(towers)}).*?(?:{alternatives(blocks)}).*?\.(?:{alternatives(lora.target_modules)})"


def build_trainer(runtime, params, model, processor, train_rows: list[dict], val_rows: list[dict],
                  output_dir: str, callbacks: list):
    """TRL's SFTTrainer with a vision collator that processes each batch's texts and images, as Unsloth's
    notebooks configure it; loss on the assistant's answers with train.train_on_responses_only."""
    if params.train.packing:
        raise SlothlineError("train.packing: packing is not supported for vision models (TRL and Unsloth pack text "
                             "rows only); set train.packing: false")
    markers = turn_markers([r["text"] for r in train_rows]) if params.train.train_on_responses_only else None
    if runtime.backend == "unsloth":
        from unsloth.trainer import UnslothVisionDataCollator

        collator = UnslothVisionDataCollator(model, processor, train_on_responses_only=bool(markers),
                                             instruction_part=markers and markers[0], response_part=markers and markers[1])
    else:
        collator = AnswerCollator(processor, markers)
    config = sft_config(runtime, params, output_dir, evaluate=bool(val_rows), packing=False, padding_free=False,
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


def training_rows(rows: list[dict]):
    """What the collators read, as a `datasets.Dataset`: the rendered `text` (hf), the `messages` (Unsloth)
    and the image paths. Every content becomes a list of parts with the same keys, as Arrow needs one
    type per column (Unsloth's collator drops the parts' None values again)."""
    from datasets import Dataset

    as_parts = lambda content: [{"type": "text", "text": content}] if isinstance(content, str) else content
    part = lambda values: {"type": values["type"], "text": values.get("text"), "image": values.get("image")}
    return Dataset.from_list([{
        "text": row["text"],
        "messages": [{"role": m["role"], "content": [part(p) for p in as_parts(m["content"])]} for m in row["messages"]],
        "images": image_paths(row),
    } for row in rows])


def image_paths(row: dict) -> list[str]:
    return [part["image"] for part in image_parts(row["messages"])]


def load_images(row: dict) -> list:
    return [open_rgb(path) for path in image_paths(row)]


class AnswerCollator:
    """A batch of rendered texts and their images through the processor (right padding), with labels: the
    input ids on the assistant's answers (each up to and including its end-of-turn token) and -100 elsewhere
    (prompts, image tokens, padding). Without `markers` every real token but the image tokens is a label."""

    def __init__(self, processor, markers: tuple[str, str] | None):
        self.processor = processor
        tokenizer = processor.tokenizer
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        self.markers = markers and (encode(markers[0]), encode(markers[1]))
        self.eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.image_id = processor.image_token_id

    def __call__(self, rows: list[dict]) -> dict:
        pictures = [picture for row in rows for picture in load_images(row)]
        batch = self.processor(text=[row["text"] for row in rows], images=pictures or None, return_tensors="pt",
                               padding=True, padding_side="right", add_special_tokens=False)
        if self.markers:
            import torch

            labels = torch.tensor([answer_labels(ids, *self.markers, self.eos_id) for ids in batch["input_ids"].tolist()])
        else:
            labels = batch["input_ids"].clone()
            labels[labels == self.image_id] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def answer_labels(ids: list[int], instruction: list[int], response: list[int], eos_id: int) -> list[int]:
    """`ids` on the answers (after each response marker, up to and including the end-of-turn token, or up to
    the next marker), -100 elsewhere: the tokens Unsloth's train_on_responses_only keeps."""
    at = lambda i, marker: ids[i : i + len(marker)] == marker
    targets, i = [-100] * len(ids), 0
    while i < len(ids):
        if not at(i, response):
            i += 1
            continue
        i += len(response)
        while i < len(ids) and not at(i, response) and not at(i, instruction):
            targets[i] = ids[i]
            i += 1
            if ids[i - 1] == eos_id:
                break
    return targets


def predict(model, processor, rows: list[dict], settings, desc: str) -> list[str]:
    """Generated answers to the rows' prompts and images (batched, left-padded, decoded as `evaluate.*` ask)."""
    from stages.lib.generate import decoding, generate

    return generate(model, processor, [r["prompt"] for r in rows], settings.batch_size, settings.max_new_tokens,
                    decoding(settings, model.generation_config), settings.seed, desc=desc,
                    images=[load_images(row) for row in rows])


def score(model, processor, rows: list[dict], answers: list[str], settings) -> dict:
    """Text metrics of the answers against the references, and the teacher-forced loss on the reference
    answers' tokens (on the whole text where no known chat markers tell where answers are)."""
    from stages.lib.generate import summed_loss
    from stages.lib.metrics import loss_metrics, text_metrics

    try:
        markers = turn_markers([r["text"] for r in rows])
    except SlothlineError:
        markers = None
    collate = AnswerCollator(processor, markers)
    total, count = 0.0, 0
    for start in range(0, len(rows), settings.batch_size):
        batch = collate(rows[start : start + settings.batch_size])
        batch_total, batch_count = summed_loss(model, {k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
        total, count = total + batch_total, count + batch_count
    return {**text_metrics(answers, [r["reference"] for r in rows]), **loss_metrics(total, count),
            "loss_tokens": count, "loss_on": "answers" if markers else "whole text"}


def sample(row: dict, answers: dict[str, str], media_dir: Path) -> dict:
    """The question with a thumbnail of its (first) image, written into `media_dir` (THUMBNAILS_DIR once
    evaluate is done), the reference and each model's answer."""
    question = next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    if isinstance(question, list):
        question = "\n".join(part["text"] for part in question if part["type"] == "text")
    paths = image_paths(row)
    cell = ""
    if paths:
        thumbnail(Path(paths[0]), media_dir / f"{row['id']}.png")
        cell = f'<img src="{THUMBNAILS_DIR.name}/{row["id"]}.png" alt="image">'
    return {"id": row["id"], "image": cell, "prompt": question, "reference": row["reference"], **answers}
