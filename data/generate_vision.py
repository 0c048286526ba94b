"""Write the bundled vision samples to data/raw/vision/: small synthetic pictures (64x64 PNG, a 2x2 grid
of cells, each empty or holding one coloured circle, square or triangle) and questions about them whose
answers are deterministic functions of the picture ("red", "a circle", "top left", "3"), in the three
vision formats: messages.jsonl (content parts; local paths, OpenAI image_url parts and a few inline
data URIs), vqa.csv (image, question, answer) and sharegpt_vision.json (LLaVA style: <image> markers
and an `images` list). Every (picture, question) pair appears once across the three files, so
train and test never share a row; a few exact duplicates are added on purpose for prepare to remove.
The output is deterministic and committed; rerun by hand (`python data/generate_vision.py`).
"""

import base64
import csv
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "raw" / "vision"
SEED = 4321
SIZE, CELL = 64, 32
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
CELLS = ("top left", "top right", "bottom left", "bottom right")
VARIANTS = 2  # pictures per (shape, colour, cell), drawn at different sizes
COUNT_PICTURES = 120

COLOUR_QUESTIONS = ("What colour is the shape?", "Which colour is the shape in the picture?")
SHAPE_QUESTIONS = ("What shape is this?", "Which shape do you see?")
WHERE_QUESTIONS = ("Where is the shape?", "In which corner is the shape?")
COUNT_QUESTIONS = ("How many shapes are there?", "Count the shapes.")


def draw(items: list[tuple[str, str, int, int]]) -> Image.Image:
    """A white picture with one (shape, colour, cell, radius) per listed cell."""
    picture = Image.new("RGB", (SIZE, SIZE), "white")
    pen = ImageDraw.Draw(picture)
    for shape, colour, cell, radius in items:
        cx, cy = CELL * (cell % 2) + CELL // 2, CELL * (cell // 2) + CELL // 2
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if shape == "circle":
            pen.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            pen.rectangle(box, fill=COLOURS[colour])
        else:
            pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                        fill=COLOURS[colour])
    return picture


def pictures(rng: random.Random) -> list[tuple[str, Image.Image, list[tuple[str, str]]]]:
    """(file name, picture, [(question, answer), ...]) for every picture."""
    made = []
    for shape in SHAPES:
        for colour in COLOURS:
            for cell, where in enumerate(CELLS):
                for variant in range(VARIANTS):
                    picture = draw([(shape, colour, cell, 9 + 4 * variant)])
                    name = f"{shape}-{colour}-{where.replace(' ', '-')}-{variant}.png"
                    made.append((name, picture, [
                        (rng.choice(COLOUR_QUESTIONS), colour),
                        (rng.choice(SHAPE_QUESTIONS), f"a {shape}"),
                        (rng.choice(WHERE_QUESTIONS), where),
                    ]))
    seen = set()
    while len(made) < len(SHAPES) * len(COLOURS) * len(CELLS) * VARIANTS + COUNT_PICTURES:
        cells = sorted(rng.sample(range(4), rng.randint(1, 4)))
        items = tuple((rng.choice(SHAPES), rng.choice(sorted(COLOURS)), cell, rng.choice((9, 13))) for cell in cells)
        if items in seen:
            continue
        seen.add(items)
        made.append((f"count-{len(seen):03d}.png", draw(list(items)), [(rng.choice(COUNT_QUESTIONS), str(len(cells)))]))
    return made


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def messages_row(rng, image: str, question: str, answer: str, inline: bytes | None) -> dict:
    """OpenAI-style content parts: an image part (a path, an image_url with a path, or a data URI), then the text."""
    if inline is not None:
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(inline).decode()}}
    elif rng.random() < 0.3:
        part = {"type": "image_url", "image_url": {"url": image}}
    else:
        part = {"type": "image", "image": image}
    return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": question}]},
                         {"role": "assistant", "content": answer}]}


def sharegpt_row(rng, image: str, question: str, answer: str) -> dict:
    """LLaVA / LLaMA-Factory style: an <image> marker before or after the question, the path in `images`."""
    value = f"<image>\n{question}" if rng.random() < 0.7 else f"{question}\n<image>"
    return {"conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": answer}], "images": [image]}


def main() -> None:
    rng = random.Random(SEED)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, picture, questions in pictures(rng):
        (OUT / "images" / name).write_bytes(png_bytes(picture))
        rows += [(f"images/{name}", picture, question, answer) for question, answer in questions]
    rng.shuffle(rows)
    messages, vqa, sharegpt = [], [], []
    for i, (image, picture, question, answer) in enumerate(rows):
        if i % 3 == 0:
            inline = png_bytes(picture) if i % 30 == 0 else None
            messages.append(messages_row(rng, image, question, answer, inline))
        elif i % 3 == 1:
            vqa.append({"image": image, "question": question, "answer": answer})
        else:
            sharegpt.append(sharegpt_row(rng, image, question, answer))
    for table in (messages, vqa, sharegpt):  # exact duplicates, on purpose: prepare removes them
        for row in rng.sample(table, 2):
            table.insert(rng.randrange(len(table) + 1), row)
    (OUT / "messages.jsonl").write_text("".join(json.dumps(row) + "\n" for row in messages), newline="\n")
    with (OUT / "vqa.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["image", "question", "answer"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(vqa)
    (OUT / "sharegpt_vision.json").write_text(json.dumps(sharegpt, indent=1) + "\n", newline="\n")
    print(f"{len(rows)} questions: messages {len(messages)}, vqa {len(vqa)}, sharegpt_vision {len(sharegpt)} "
          f"rows -> {OUT}/")


if __name__ == "__main__":
    main()
