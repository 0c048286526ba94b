"""The builtin tiny models (`model.name: builtin:*`): built locally and deterministically from a seed, written
once into a cache directory, and from then on loaded through `from_pretrained` like any local checkpoint.
Their chat templates and the tokenizer corpus lie beside this file."""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slothline.errors import SlothlineError

FILES_DIR = Path(__file__).parent

# Qwen2/Qwen3's pre-tokenizer split, so the byte-level tokenizer behaves (and exports) like Qwen's.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_THINK_TOKENS = ["<think>", "</think>"]
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TOKENIZER_VOCAB = 480  # bytes and merges; the special tokens come after them, below the model's 512 rows

QWEN3_TEXT = {  # the tiny Qwen3 text model, also the text tower of the tiny Qwen3-VL
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "initializer_range": 0.1,
}
TINY_QWEN3 = {"seed": 0, "config": {**QWEN3_TEXT, "tie_word_embeddings": True}}


TINY_QWEN3_VL = {
    "seed": 0,
    "text_config": {
        **QWEN3_TEXT,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [6, 5, 5],
                            "mrope_interleaved": True},  # sum(mrope_section) == head_dim / 2
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 128,  # the text hidden_size
        "num_position_embeddings": 64,  # a square: an 8x8 grid of patches, interpolated for other sizes
        "deepstack_visual_indexes": [0, 1],  # vision layers (< depth) fed into the first text layers
        "initializer_range": 0.1,
    },
    # Each 32x32 pixel block is one image token; 64x64 images stay 64x64 (4 tokens), larger ones are
    # scaled to at most 256x256 pixels (64 tokens).
    "image_processor": {"min_pixels": 32 * 32, "max_pixels": 256 * 256, "image_mean": [0.5, 0.5, 0.5],
                        "image_std": [0.5, 0.5, 0.5]},
}

WORDPIECE_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TINY_MODERNBERT = {
    "seed": 0,
    "config": {
        "vocab_size": 512,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "local_attention": 64,
        "initializer_range": 0.1,
        "classifier_pooling": "mean",  # as ModernBERT-base
    },
}


def cache_root() -> Path:
    return Path(os.environ.get("SLOTHLINE_CACHE", Path.home() / ".cache" / "slothline"))


def directory(name: str) -> Path:
    """The built directory of `builtin:<name>` (built on first use)."""
    builtin = name.removeprefix("builtin:")
    if builtin not in BUILTIN_MODELS:
        raise SlothlineError(f"model.name: unknown builtin model {name!r}; choose one of "
                             f"{', '.join('builtin:' + n for n in BUILTIN_MODELS)}, a local path or a hub id")
    return ensure_builtin(builtin)


def ensure_builtin(builtin: str, root: Path | None = None) -> Path:
    """Build the builtin model into the cache once (atomically) and return its directory."""
    model = BUILTIN_MODELS[builtin]
    fingerprint = hashlib.sha256(json.dumps(model.spec, sort_keys=True).encode())
    for name in model.files:
        fingerprint.update((FILES_DIR / name).read_bytes())
    target = (root or cache_root()) / "builtin" / f"{builtin}-{fingerprint.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{builtin}-", dir=target.parent))
    try:
        model.build(staging, model.spec)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same build first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_qwen3(out_dir: Path, spec: dict) -> None:
    """A randomly initialised Qwen3 with a byte-level tokenizer and Qwen3's chat template."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_byte_tokenizer()
    config = Qwen3Config(
        **spec["config"],
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec["seed"])
    model = Qwen3ForCausalLM(config)
    # Qwen3's recommended sampling (its generation_config.json), which evaluate.sampling: model uses
    model.generation_config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                   do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_tiny_qwen3_vl(out_dir: Path, spec: dict) -> None:
    """A randomly initialised Qwen3-VL (vision tower, merger and Qwen3 text model) with the byte-level
    tokenizer plus Qwen's vision tokens, a chat template that renders image parts, and a processor whose
    image patches match the vision tower."""
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    template = (FILES_DIR / "qwen3_vl_chat_template.jinja").read_text()
    tokenizer = build_byte_tokenizer(QWEN_VISION_TOKENS, template)
    vision = spec["vision_config"]
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config={**spec["text_config"], "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config=vision,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    patches = {"patch_size": vision["patch_size"], "merge_size": vision["spatial_merge_size"],
               "temporal_patch_size": vision["temporal_patch_size"]}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**patches, **spec["image_processor"]),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**patches),
        chat_template=template,
    )
    torch.manual_seed(spec["seed"])
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_byte_tokenizer(extra_special_tokens: list[str] = (), chat_template: str | None = None):
    """Byte-level BPE: 256 byte tokens plus merges learned from a fixed corpus shipped with the code
    (tokenizer_corpus.txt, independent of any training data), Qwen's special tokens (and
    `extra_special_tokens`) and Qwen3's chat template (or `chat_template`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator([(FILES_DIR / "tokenizer_corpus.txt").read_text()], trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in QWEN_SPECIAL_TOKENS + list(extra_special_tokens)])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template or (FILES_DIR / "qwen3_chat_template.jinja").read_text(),
        model_max_length=TINY_QWEN3["config"]["max_position_embeddings"],
    )


def build_tiny_modernbert(out_dir: Path, spec: dict) -> None:
    """A randomly initialised ModernBERT encoder saved with its masked-LM head, as ModernBERT checkpoints
    are (a classification head is added when it is loaded for classification), with a WordPiece tokenizer."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    tokenizer = build_wordpiece_tokenizer(spec["config"]["max_position_embeddings"])
    config = ModernBertConfig(
        **spec["config"],
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=None,  # an encoder's tokenizer has no BOS or EOS, and the config says so
        eos_token_id=None,
    )
    torch.manual_seed(spec["seed"])
    ModernBertForMaskedLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_wordpiece_tokenizer(max_length: int):
    """BERT-style WordPiece (lower case, `[CLS] A [SEP] B [SEP]`) whose vocabulary is the words and the
    characters of a fixed corpus shipped with the code (tokenizer_corpus.txt, as for the byte-level
    tokenizer), each character also as a `##` continuation: other words split into smaller pieces.
    Listed in sorted order rather than learned (tokenizers' WordPiece trainer breaks ties differently
    in every process), so the same corpus always gives the same ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    corpus = normalizer.normalize_str((FILES_DIR / "tokenizer_corpus.txt").read_text())
    words = {word for word, _ in pre_tokenizer.pre_tokenize_str(corpus)}
    characters = {character for word in words for character in word}
    pieces = WORDPIECE_SPECIAL_TOKENS + sorted(words | characters) + sorted("##" + c for c in characters)
    backend = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer, backend.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length,
                                   model_input_names=["input_ids", "attention_mask"])  # ModernBERT has no token types


@dataclass(frozen=True)
class Builtin:
    """A tiny model built locally: its kind, its builder, the spec it is built from (seed, config) and the
    data files the build reads (all of them name its cache directory)."""

    kind: str
    build: Callable[[Path, dict], None]
    spec: dict
    files: tuple[str, ...]


BUILTIN_MODELS = {
    "tiny-qwen3": Builtin("causal_lm", build_tiny_qwen3, TINY_QWEN3,
                          ("qwen3_chat_template.jinja", "tokenizer_corpus.txt")),
    "tiny-qwen3-vl": Builtin("vision", build_tiny_qwen3_vl, TINY_QWEN3_VL,
                             ("qwen3_vl_chat_template.jinja", "tokenizer_corpus.txt")),
    "tiny-modernbert": Builtin("classifier", build_tiny_modernbert, TINY_MODERNBERT, ("tokenizer_corpus.txt",)),
}
