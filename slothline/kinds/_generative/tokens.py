"""Token ids of rendered rows, message text that spells special tokens (a row's `literals`) tokenized as
plain text: one row (`encode`) or a padded batch through the tokenizer or a multimodal processor
(`encode_batch`)."""

# rendered field: {"text": [[start, end], ...], "prompt": [...]}, the message text that spells special tokens
LITERALS = "literals"


def tokenizer_of(processor):
    """The text tokenizer of a tokenizer or a multimodal processor."""
    return getattr(processor, "tokenizer", processor)


def literal_spans(row: dict, field: str) -> list[list[int]]:
    """The `literals` spans of a rendered row's `field` (`text` or `prompt`); [] for most rows."""
    return (row.get(LITERALS) or {}).get(field) or []


def encode(processor, text: str, spans=()) -> list[int]:
    """The token ids of a rendered text, the characters of `spans` (message text spelling special tokens)
    tokenized as plain text: each stretch between two of the template's special tokens that holds such a
    span is tokenized again with split_special_tokens. Without spans: exactly the tokenizer's ids."""
    tokenizer = tokenizer_of(processor)
    if not spans:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    literal = lambda i: ids[i] in special and any(s <= offsets[i][0] and offsets[i][1] <= e for s, e in spans)
    bounds = [i for i in range(len(ids)) if ids[i] in special and not literal(i)]
    out, previous = [], -1
    for bound in [*bounds, len(ids)]:
        run = range(previous + 1, bound)
        if any(literal(i) for i in run):
            start = offsets[previous][1] if previous >= 0 else 0
            end = offsets[bound][0] if bound < len(ids) else len(text)
            out += tokenizer(text[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        else:
            out += ids[previous + 1 : bound]
        if bound < len(ids):
            out.append(ids[bound])
        previous = bound
    return out


def encode_rows(processor, rows: list[dict], field: str = "text") -> list[list[int]]:
    """`encode`'s ids of each rendered row's `field`, the rows without literals tokenized in one batch."""
    if not rows:
        return []
    ids = tokenizer_of(processor)([row[field] for row in rows], add_special_tokens=False)["input_ids"]
    return [encode(processor, row[field], spans) if (spans := literal_spans(row, field)) else row_ids
            for row, row_ids in zip(rows, ids)]


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
