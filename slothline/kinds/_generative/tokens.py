"""Token ids of rendered rows, message text that spells special tokens (a row's `literals`) tokenized as
plain text: one row (`encode`) or a padded batch through the tokenizer or a multimodal processor
(`encode_batch`)."""

from slothline.errors import SlothlineError

# rendered field: {"text": [[start, end], ...], "prompt": [...]}, the message text that spells special tokens
LITERALS = "literals"


def tokenizer_of(processor):
    """The text tokenizer of a tokenizer or a multimodal processor."""
    return getattr(processor, "tokenizer", processor)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every text with its BOS token (Llama, Mistral, Gemma; not Qwen)."""
    return tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def literal_spans(row: dict, field: str) -> list[list[int]]:
    """The `literals` spans of a rendered row's `field` (`text` or `prompt`); [] for most rows."""
    return (row.get(LITERALS) or {}).get(field) or []


def encode(processor, text: str, spans=(), offsets: bool = False):
    """The token ids of a rendered text, the characters of `spans` (message text spelling special tokens)
    tokenized as plain text: each stretch between two of the template's special tokens that holds such a
    span is tokenized again with split_special_tokens. Without spans: exactly the tokenizer's ids. With
    `offsets`: (ids, each token's (start, end) characters in `text`)."""
    tokenizer = tokenizer_of(processor)
    if not spans and not offsets:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    encoded = _encoded_with_offsets(tokenizer, text)
    ids, places = encoded["input_ids"], encoded["offset_mapping"]
    if spans:
        ids, places = _literals_as_text(tokenizer, text, spans, ids, places)
    return (ids, places) if offsets else ids


def _encoded_with_offsets(tokenizer, texts, **options) -> dict:
    """The tokenizer's encoding of `texts` (one or a list) with each token's character span, `offset_mapping`."""
    try:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, **options)
    except NotImplementedError:
        encoded = {}
    if "offset_mapping" not in encoded:
        raise SlothlineError(
            f"model.name: the tokenizer ({type(tokenizer).__name__}) gives no character offsets, which the answer "
            "mask and message text spelling special tokens need; use a checkpoint with a tokenizer.json (transformers "
            "then loads a tokenizer that has them)")
    return encoded


def _literals_as_text(tokenizer, text: str, spans, ids: list[int], places: list) -> tuple[list[int], list]:
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    literal = lambda i: ids[i] in special and any(s <= places[i][0] and places[i][1] <= e for s, e in spans)
    bounds = [i for i in range(len(ids)) if ids[i] in special and not literal(i)]
    out_ids, out_places, previous = [], [], -1
    for bound in [*bounds, len(ids)]:
        run = range(previous + 1, bound)
        if any(literal(i) for i in run):
            start = places[previous][1] if previous >= 0 else 0
            end = places[bound][0] if bound < len(ids) else len(text)
            piece = _encoded_with_offsets(tokenizer, text[start:end], split_special_tokens=True)
            out_ids += piece["input_ids"]
            out_places += [(start + s, start + e) for s, e in piece["offset_mapping"]]
        else:
            out_ids += ids[previous + 1 : bound]
            out_places += places[previous + 1 : bound]
        if bound < len(ids):
            out_ids.append(ids[bound])
            out_places.append(places[bound])
        previous = bound
    return out_ids, out_places


def encode_rows(processor, rows: list[dict], field: str = "text", offsets: bool = False) -> list:
    """`encode`'s ids (with `offsets`: (ids, offsets)) of each rendered row's `field`, the rows without literals
    tokenized in one batch."""
    if not rows:
        return []
    tokenizer = tokenizer_of(processor)
    texts = [row[field] for row in rows]
    if offsets:
        encoded = _encoded_with_offsets(tokenizer, texts)
        batch = list(zip(encoded["input_ids"], encoded["offset_mapping"]))
    else:
        batch = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [encode(processor, row[field], spans, offsets) if (spans := literal_spans(row, field)) else encoded_row
            for row, encoded_row in zip(rows, batch)]


def encode_batch(processor, texts: list[str], literals: list | None = None, images: list | None = None,
                 padding_side: str = "right") -> dict:
    """Model inputs (tensors, padded on `padding_side`) of rendered texts, through the tokenizer, or the
    processor when `images` (all the batch's pictures, in the order of the texts' image tokens) are given.
    Texts with `literals` spans get `encode`'s ids; image placeholders keep the processor's expansion."""
    tokenizer = tokenizer_of(processor)
    options = {"return_tensors": "pt", "padding": True, "add_special_tokens": False}
    if images is not None:
        batch = processor(text=texts, images=images or None, padding_side=padding_side, **options)
    else:
        batch = tokenizer(texts, padding_side=padding_side, **options)
    literals = literals or [()] * len(texts)
    if not any(literals):
        return batch
    import torch

    ids = batch["input_ids"]
    per_token = [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == ids.shape]
    image_id = getattr(processor, "image_token_id", None) if images is not None else None
    rows = []
    for b, (text, spans) in enumerate(zip(texts, literals)):
        kept = batch["attention_mask"][b].bool()
        row = {k: batch[k][b][kept].tolist() for k in per_token}
        if spans:
            row = _with_ids(row, encode(processor, text, spans), image_id)
        rows.append(row)
    width = max(len(row["input_ids"]) for row in rows)
    pads = {k: 0 for k in per_token} | {"input_ids": tokenizer.pad_token_id}
    padded = {k: [] for k in per_token}
    for row in rows:
        for k in per_token:
            fill = [pads[k]] * (width - len(row[k]))
            padded[k].append(row[k] + fill if padding_side == "right" else fill + row[k])
    return {**dict(batch), **{k: torch.tensor(v, dtype=batch[k].dtype) for k, v in padded.items()}}


def _with_ids(row: dict, ids: list[int], image_id: int | None) -> dict:
    """`row` (per-token lists of one processed text) with the input ids `ids`, each image placeholder of `ids`
    expanded as the processor expanded it (the k-th placeholder into the k-th run of image tokens)."""
    processed = row["input_ids"]
    runs = []  # (start, length) of each run of image tokens in the processed ids
    for i, token in enumerate(processed):
        if image_id is not None and token == image_id:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    text_position = next((i for i, token in enumerate(processed) if token != image_id), 0)
    out = {k: [] for k in row}
    placeholders = 0
    for token in ids:
        if image_id is not None and token == image_id and placeholders < len(runs):
            start, length = runs[placeholders]
            placeholders += 1
            for k in row:
                out[k] += row[k][start : start + length]
        else:
            for k in row:
                out[k].append(token if k == "input_ids" else row[k][text_position])
    return out
