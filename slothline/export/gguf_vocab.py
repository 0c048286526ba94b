"""A model's tokenizer as GGUF metadata, decided from its tokenizer.json as llama.cpp reads it.

Two tokenizer types are written: byte-level BPE (Qwen, Llama 3, Mistral's Tekken) as llama.cpp's `gpt2` model
with the pre-tokenizer that splits a probe text as the model's own does, and BPE with byte fallback converted
from SentencePiece (Gemma, Mistral 7B, Phi-3, Llama 2) as llama.cpp's `llama` (SentencePiece) model, each
token scored by its merge's rank so that llama.cpp merges in transformers' order.
"""

import json
from pathlib import Path

from slothline.export import SENTENCEPIECE, pre_tokenizer, tokenizer_type


def adds_space_prefix(tokenizer_json: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts `▁` before the text (Llama 2, Mistral, Phi-3; not Gemma)."""
    parts = lambda part: part.get("normalizers") or part.get("pretokenizers") or [part]
    steps = [*parts(tokenizer_json.get("normalizer") or {}), *parts(tokenizer_json.get("pre_tokenizer") or {})]
    return any(step.get("type") == "Prepend" or step.get("prepend_scheme") in ("first", "always") for step in steps)


def write_vocab(writer, tokenizer, model_dir: Path, vocab_size: int) -> None:
    """The vocabulary padded to the embedding size, its token types (and scores or merges), the special token
    ids, whether a BOS starts a text, and the chat template."""
    import gguf

    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    kind = tokenizer_type(tokenizer_json)
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
            if kind == SENTENCEPIECE and not added[i].special:  # llama.cpp matches these in the raw text
                tokens[-1] = token.replace("▁", " ")
        elif kind == SENTENCEPIECE and i == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif kind == SENTENCEPIECE and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in tokenizer_json["model"].get("merges", [])]
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == SENTENCEPIECE:
        writer.add_tokenizer_pre("default")
        scores = merge_scores(tokens, pairs)
        for i in added:  # as llama.cpp's converter scores added tokens: never a merge's result
            scores[i] = -1000.0
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(adds_space_prefix(tokenizer_json))
    else:
        writer.add_tokenizer_pre(pre_tokenizer(tokenizer_json))
        writer.add_token_merges([" ".join(pair) for pair in pairs])
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    encoded = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and encoded[:1] == [tokenizer.bos_token_id])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def merge_scores(tokens: list[str], merges: list[list[str]]) -> list[float]:
    """SentencePiece scores that make llama.cpp's highest-score-first merging follow the BPE merge ranks: a
    token scores minus the rank of the first merge that makes it; tokens no merge makes score 0."""
    rank = {}
    for i, (left, right) in enumerate(merges):
        rank.setdefault(left + right, i)
    return [-float(rank[token]) if token in rank else 0.0 for token in tokens]
