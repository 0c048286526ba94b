"""Tiny random checkpoints of the families GGUF export writes, each with a tokenizer of its family's type built
here: byte-level BPE split as Qwen 2/3, Llama 3 or Mistral's Tekken split, or SentencePiece-style BPE with byte
fallback (its merges regenerated from the vocabulary, as transformers converts SentencePiece models) with a
space prefix as Llama 2, Mistral 7B and Phi-3, or without as Gemma."""

from pathlib import Path

from slothline.builtin import QWEN_SPLIT
from slothline.families import PRE_TOKENIZERS

CORPUS = Path(__file__).parents[1] / "slothline" / "builtin" / "tokenizer_corpus.txt"
VOCAB = 480  # below the models' 512 rows: the rest are padding rows

CHAT_TEMPLATES = {
    "gemma3_text": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                   "m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
                   "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "mistral": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
               "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
    "phi3": "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    "llama": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
             "{{ m['content'] }}<|eot_id|>{% endfor %}"
             "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
}
SPECIAL_TOKENS = {  # bos, eos, pad, then the chat markers
    "gemma3_text": ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
    "mistral": ("<s>", "</s>", None, "[INST]", "[/INST]"),
    "phi3": ("<s>", "<|endoftext|>", "<|endoftext|>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"),
    "llama": ("<|begin_of_text|>", "<|eot_id|>", None, "<|start_header_id|>", "<|end_header_id|>"),
}


def byte_level_tokenizer(split: str):
    """A byte-level BPE tokenizer whose pre-tokenizer splits as llama.cpp's `split` (a PRE_TOKENIZERS name)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    pattern = QWEN_SPLIT if split == "qwen2" else PRE_TOKENIZERS[split]
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train([str(CORPUS)], trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     show_progress=False))
    return backend


def sentencepiece_style_tokenizer(space_prefix: bool, legacy: bool = True):
    """BPE with byte fallback over `▁`-joined words, merges regenerated from the vocabulary by transformers'
    SentencePiece conversion rule (every split of a piece into two pieces, in the piece's order). `legacy`
    puts the space prefix before each stretch of text, as SentencePiece does; otherwise before the first
    alone (transformers' `legacy=False` Llama and Mistral tokenizers)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import generate_merges

    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer_side = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trainer_side.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first" if space_prefix else "never")
    trainer_side.train([str(CORPUS)], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", *bytes_],
                                                          show_progress=False))
    vocab = trainer_side.get_vocab()
    merges = generate_merges(vocab, [(piece, -i) for piece, i in vocab.items()], skip_tokens={"<unk>", *bytes_})
    backend = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if legacy:
        steps = [normalizers.Prepend("▁")] if space_prefix else []
        backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    strip = [decoders.Strip(" ", 1, 0)] if space_prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    return backend


def tiny_family_model(out_dir: Path, model_type: str, legacy: bool = True, adds_bos: bool = False, **config) -> Path:
    """A tiny random `model_type` checkpoint with its family's tokenizer type (`legacy`: see
    sentencepiece_style_tokenizer) and chat template in `out_dir`; with `adds_bos` the tokenizer starts every
    text with its BOS token, as the real ones of these families do."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    backend = (byte_level_tokenizer("llama-bpe") if model_type == "llama"
               else sentencepiece_style_tokenizer(space_prefix=model_type != "gemma3_text", legacy=legacy))
    bos, eos, pad, *markers = SPECIAL_TOKENS[model_type]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in dict.fromkeys(x for x in (bos, eos, pad, *markers) if x)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                        unk_token="<unk>" if model_type != "llama" else None,
                                        chat_template=CHAT_TEMPLATES[model_type],
                                        **({"add_bos_token": True} if adds_bos else {}))
    sizes = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if model_type == "gemma3_text":
        sizes.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, num_hidden_layers=3,
                     layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**sizes, **config}))
    with torch.no_grad():  # weights large enough that a layout error changes the output
        for name, weight in model.named_parameters():
            attention = any(part in name for part in ("q_proj", "k_proj", "qkv"))
            weight.normal_(0, (0.1 if attention else 0.05) if weight.dim() > 1 else 0.3)
            if "norm" in name and model_type != "gemma3_text":  # Gemma stores norms as w - 1
                weight.add_(1.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
