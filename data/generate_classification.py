"""Write data/raw/reviews.jsonl: short product reviews labelled negative, neutral or positive (the
`classification` format: `text`, `label`), about 600 rows with unequal classes, for the classifier
default (conf/kind/classifier.yaml). Sentiment comes from the words a review uses, mixed with product
names and filler that every class shares, so a tiny encoder can learn it in a minute on a CPU.
The output is deterministic and committed; rerun by hand (`python data/generate_classification.py`).
"""

import json
import random
from pathlib import Path

RAW = Path(__file__).resolve().parent / "raw"
SEED = 4321
ROWS = {"positive": 240, "negative": 200, "neutral": 160}

PRODUCTS = [
    "lamp", "kettle", "backpack", "phone case", "chair", "blender", "jacket", "desk", "toaster", "umbrella",
    "headset", "mug", "bike light", "tent", "keyboard", "pillow", "watch", "teapot", "scarf", "speaker",
]
OPENERS = ["I bought this {p} last week.", "We got the {p} for the kitchen.", "My sister ordered the {p}.",
           "This {p} came on Monday.", "I have used the {p} for a month.", "The {p} was a gift."]
CUES = {
    "positive": ["I love it", "it works great", "excellent quality", "really happy with it", "it is perfect",
                 "wonderful value", "I would buy it again", "highly recommend it", "better than I hoped",
                 "five stars from me"],
    "negative": ["it broke after two days", "terrible quality", "I want my money back", "a complete waste",
                 "very disappointed", "it stopped working", "awful smell", "I returned it", "cheap and flimsy",
                 "one star, avoid"],
    "neutral": ["it is blue", "it came in a brown box", "it weighs about a kilo", "the manual is in English",
                "it has two buttons", "it is the medium size", "delivery took four days", "it uses a USB cable",
                "the colour is grey", "it fits on a shelf"],
}
FILLERS = ["", " Nothing else to add.", " My neighbour has one too.", " It sits by the window now.",
           " We will see how it goes."]


def review(rng: random.Random, label: str) -> str:
    """One review: an opener naming a product, one or two cue phrases of the label, and filler."""
    product = rng.choice(PRODUCTS)
    cues = rng.sample(CUES[label], rng.choice((1, 2)))
    body = " and ".join(cues)
    return f"{rng.choice(OPENERS).format(p=product)} {body[0].upper()}{body[1:]}.{rng.choice(FILLERS)}"


def main() -> None:
    rng = random.Random(SEED)
    rows, seen = [], set()
    for label, count in ROWS.items():
        made = 0
        while made < count:
            text = review(rng, label)
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
                made += 1
    rng.shuffle(rows)
    RAW.mkdir(exist_ok=True)
    with (RAW / "reviews.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
