"""Convert one row of a vision data format into canonical messages whose content may hold image parts.

A user or system turn's content is a string or a list of parts, `{"type": "text", "text"}` and
`{"type": "image", "image": <reference>}`, the reference being what the row wrote (a path, relative to
the data file, or a data URI; an image embedded in the row, as Hugging Face datasets store one, becomes a data
URI); the vision kind resolves, checks and stores the images. Answers are text.
"""

import base64
import io

from slothline.data.formats import (IMAGE_PARTS, TEXT_PARTS, check_part, check_turn_order, message_turns,
                                    required_text, sharegpt)
from slothline.errors import RowError
from slothline.kinds.vision.images import as_viewed

IMAGE_MARKER = "<image>"


def messages(row: dict) -> list[dict]:
    """OpenAI style, with image parts: `{"type": "image", "image": "pic.png"}`, or
    `{"type": "image_url", "image_url": {"url": "pic.png" or "data:image/png;base64,..."}}`; or, as TRL's
    vision datasets hold them, image parts without a reference (`{"type": "image"}`) and the row's images in
    order in `images` (or `image`)."""
    turns = message_turns(row, content_parts)
    bare = [part for part in image_parts(turns) if part["image"] is None]
    images = row_images(row)
    if len(bare) != len(images):
        raise RowError(f"{len(bare)} image parts without a path but {len(images)} images in the row's 'images'; give "
                       'each image part its path or data URI, like {"type": "image", "image": "picture.png"}, or '
                       "list the row's images in order in 'images', one for each part without a path (rows whose "
                       "text holds <image> markers are the sharegpt_vision format's)")
    for part, image in zip(bare, images):
        part["image"] = image
    return checked(turns)


def vqa(row: dict) -> list[dict]:
    """{"image", "question", "answer"}: one question about one image (a path, a data URI or an embedded image)."""
    if row.get("image") is not None and not isinstance(row["image"], str):
        row = {**row, "image": image_text(row["image"], "field 'image'")}
    image, question = {"type": "image", "image": required_text(row, "image")}, required_text(row, "question")
    return checked([
        {"role": "user", "content": [image, {"type": "text", "text": question}]},
        {"role": "assistant", "content": required_text(row, "answer")},
    ])


def sharegpt_vision(row: dict) -> list[dict]:
    """LLaVA / LLaMA-Factory style: ShareGPT `conversations` whose human turns hold `<image>` markers, and
    the images in order in `images` (a list) or `image` (one path)."""
    images = row_images(row)
    turns = sharegpt(row)
    markers = sum(turn["content"].count(IMAGE_MARKER) for turn in turns)
    if markers != len(images):
        raise RowError(f"{markers} {IMAGE_MARKER} markers but {len(images)} images; put one {IMAGE_MARKER} in the "
                       "human turns for each entry of 'images'")
    remaining = iter(images)
    for i, turn in enumerate(turns):
        if IMAGE_MARKER not in turn["content"]:
            continue
        if turn["role"] != "user":
            raise RowError(f"conversations[{i}]: {IMAGE_MARKER} in a {turn['role']} turn; images belong in human turns")
        pieces = turn["content"].split(IMAGE_MARKER)
        parts = [{"type": "text", "text": pieces[0].strip()}]
        for piece in pieces[1:]:
            parts += [{"type": "image", "image": next(remaining)}, {"type": "text", "text": piece.strip()}]
        turn["content"] = [part for part in parts if part["type"] == "image" or part["text"]]
    return checked(turns)


CONVERTERS = {"messages": messages, "vqa": vqa, "sharegpt_vision": sharegpt_vision}


def row_images(row: dict) -> list[str]:
    """The row's images in order, from `images` (a list) or `image` (one), as references (see `image_text`)."""
    images = row.get("images", row.get("image"))
    if images is None:
        return []
    field = "images" if "images" in row else "image"
    images = images if isinstance(images, list) else [images]
    return [image_text(image, f"field {field!r}") for image in images]


def image_text(image, where: str) -> str:
    """An image reference as text: a path or data URI as it is; an image embedded in the row, as Hugging Face
    datasets store one in Parquet files, `save_to_disk` directories and hub datasets (`{"bytes", "path"}`; a
    decoded PIL image), as a data URI of its bytes (a PIL image's as PNG)."""
    from PIL import Image

    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        if image.get("bytes"):
            return "data:image;base64," + base64.b64encode(image["bytes"]).decode("ascii")
        image = image.get("path")
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        as_viewed(image).save(buffer, format="PNG")  # 8-bit RGB: PNG holds no CMYK
        return image_text({"bytes": buffer.getvalue()}, where)
    if not isinstance(image, str) or not image.strip():
        raise RowError(f"{where}: an image needs its path, a data URI or its bytes ({{'bytes': ...}}, as Hugging Face "
                       f"datasets embed one), like {{\"type\": \"image\", \"image\": \"picture.png\"}}; got "
                       f"{type(image).__name__} {str(image)[:40]!r}")
    return image


def content_parts(content, where: str):
    """A string, or the list of canonical text and image parts of an OpenAI content list."""
    if not isinstance(content, list):
        return content
    parts = []
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        check_part(part, part_where)
        if part["type"] in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise RowError(f"{part_where}: 'text' must be a string, got {type(part.get('text')).__name__}")
            parts.append({"type": "text", "text": part["text"]})
        elif part["type"] in IMAGE_PARTS:
            parts.append({"type": "image", "image": image_reference(part, part_where)})
        else:
            raise RowError(f"{part_where}: unknown part type {part['type']!r}; use text and image parts, like "
                           '{"type": "image", "image": "picture.png"}')
    return parts


def image_reference(part: dict, where: str) -> str | None:
    """The path or data URI of an image part (see `image_text`): `image`, or `image_url` (a string or {"url"});
    None for a part without one (its image is the row's, see `messages`)."""
    reference = part.get("image") if part.get("image") is not None else part.get("image_url")
    if isinstance(reference, dict) and "url" in reference:
        reference = reference["url"]
    return None if reference is None else image_text(reference, where)


def checked(turns: list[dict]) -> list[dict]:
    """Each content non-empty, answers text only, then the turn order."""
    for i, turn in enumerate(turns):
        content = turn["content"]
        if isinstance(content, list):
            if turn["role"] == "assistant":
                if any(part["type"] == "image" for part in content):
                    raise RowError(f"turn {i} (assistant): an answer cannot hold an image; images belong in user turns")
                content = turn["content"] = "\n".join(part["text"] for part in content)
            elif not any(part["type"] == "image" or part["text"].strip() for part in content):
                raise RowError(f"turn {i} ({turn['role']}): content has neither text nor an image")
        if isinstance(content, str) and not content.strip():
            raise RowError(f"turn {i} ({turn['role']}): content must be non-empty")
        if not isinstance(content, (str, list)):
            raise RowError(f"turn {i} ({turn['role']}): content must be a string or a list of parts")
    return check_turn_order(turns)


def image_parts(messages: list[dict]) -> list[dict]:
    """The image parts of the messages, in order."""
    return [part for message in messages if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image"]
