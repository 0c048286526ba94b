"""Write the small bundled sample datasets to data/raw/: alpaca.jsonl, sharegpt.json,
messages.jsonl and reasoning.jsonl, about 300 rows each of short, highly templated tasks
(copying, reversing, upper-casing, lookups, greetings, tiny sums) that a tiny byte-level
model can visibly learn in a minute of CPU fine-tuning. The output is deterministic and
committed; rerun by hand (`python data/generate_raw.py`) when the samples change.
"""

import json
import random
from pathlib import Path

RAW = Path(__file__).resolve().parent / "raw"
SEED = 1234
ROWS = 300

WORDS = [
    "apple", "bird", "boat", "bread", "cake", "chair", "cloud", "coin", "cup", "dog",
    "door", "drum", "egg", "fish", "flag", "frog", "gold", "grape", "hat", "house",
    "ice", "jam", "kite", "lamp", "leaf", "lemon", "map", "milk", "moon", "mouse",
    "nest", "note", "owl", "paper", "pen", "pig", "plant", "queen", "rain", "ring",
    "river", "road", "rock", "rose", "salt", "sand", "ship", "shoe", "snow", "soup",
    "star", "stone", "sun", "table", "tea", "tiger", "train", "tree", "whale", "wolf",
]
NAMES = [
    "Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack",
    "Kara", "Leo", "Mia", "Nina", "Oscar", "Paul", "Rosa", "Sam", "Tom", "Zoe",
]
CAPITALS = {
    "Austria": "Vienna", "Canada": "Ottawa", "Chile": "Santiago", "China": "Beijing",
    "Cuba": "Havana", "Egypt": "Cairo", "France": "Paris", "Germany": "Berlin",
    "Greece": "Athens", "Ireland": "Dublin", "Italy": "Rome", "Japan": "Tokyo",
    "Kenya": "Nairobi", "Norway": "Oslo", "Peru": "Lima", "Poland": "Warsaw",
    "Russia": "Moscow", "Spain": "Madrid",
}
SOUNDS = {
    "bee": "buzz", "cat": "meow", "cow": "moo", "dog": "woof", "duck": "quack",
    "frog": "croak", "goat": "bleat", "horse": "neigh", "lion": "roar", "mouse": "squeak",
    "owl": "hoot", "pig": "oink", "sheep": "baa", "snake": "hiss", "wolf": "howl",
}
COLOURS = {
    "apple": "red", "banana": "yellow", "blueberry": "blue", "cherry": "red",
    "coconut": "brown", "grape": "purple", "kiwi": "green", "lemon": "yellow",
    "lime": "green", "mango": "orange", "orange": "orange", "peach": "pink",
    "pear": "green", "plum": "purple", "strawberry": "red",
}
WORD_TASKS = {  # instruction -> what it does to the word
    "Copy the word": lambda w: w,
    "Repeat the word twice": lambda w: f"{w} {w}",
    "Reverse the word": lambda w: w[::-1],
    "Uppercase the word": str.upper,
}


def an(noun):
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def sound(animal):
    return f"{an(animal).capitalize()} says {SOUNDS[animal]}."


def colour(fruit):
    return f"{an(fruit).capitalize()} is {COLOURS[fruit]}."


LOOKUPS = (
    [(f"What is the capital of {c}?", f"The capital of {c} is {CAPITALS[c]}.") for c in sorted(CAPITALS)]
    + [(f"What sound does {an(a)} make?", sound(a)) for a in sorted(SOUNDS)]
    + [(f"What colour is {an(f)}?", colour(f)) for f in sorted(COLOURS)]
)


def distinct(n, make):
    """Call make() until it has produced n different rows; keep them in first-seen order."""
    rows, seen = [], set()
    while len(rows) < n:
        row = make()
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def chat(rng, makers, keys, roles):
    """One conversation from a random maker as [{keys[0]: role, keys[1]: text}, ...];
    about a third start with the maker's system prompt."""
    system, turns = rng.choice(makers)(rng)
    pairs = [(roles[0], system)] if rng.random() < 1 / 3 else []
    for question, answer in turns:
        pairs += [(roles[1], question), (roles[2], answer)]
    return [{keys[0]: role, keys[1]: text} for role, text in pairs]


def write_jsonl(name, rows):
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (RAW / name).write_text(text, encoding="utf-8", newline="\n")


def alpaca(rng):
    def without_input():
        kind = rng.randrange(3)
        if kind == 0:
            question, answer = rng.choice(LOOKUPS)
        elif kind == 1:
            name = rng.choice(NAMES)
            question, answer = f"Say hello to {name}.", f"Hello, {name}!"
        else:
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            question, answer = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
        return {"instruction": question, "input": "", "output": answer}

    def with_input():
        task, word = rng.choice(sorted(WORD_TASKS)), rng.choice(WORDS)
        return {"instruction": f"{task}.", "input": word, "output": WORD_TASKS[task](word)}

    rows = distinct(ROWS // 2, without_input) + distinct(ROWS // 2 - 3, with_input)
    rng.shuffle(rows)
    # Exactly 3 exact duplicates, on purpose, so the dedupe step has something to remove.
    for row in rng.sample(rows, 3):
        rows.insert(rng.randrange(len(rows) + 1), row)
    write_jsonl("alpaca.jsonl", rows)


def sharegpt(rng):
    def greet(rng):
        name = rng.choice(NAMES)
        turns = [
            (f"Say hello to {name}.", f"Hello, {name}!"),
            ("Now say goodbye.", f"Goodbye, {name}!"),
            ("Say it in capitals.", f"GOODBYE, {name.upper()}!"),
        ]
        return "You are a polite greeter.", turns[: rng.randint(1, 3)]

    def sounds(rng):
        animals = rng.sample(sorted(SOUNDS), rng.randint(1, 3))
        asks = [f"What sound does {an(animals[0])} make?"] + [f"And {an(a)}?" for a in animals[1:]]
        return "You know the sounds animals make.", [(q, sound(a)) for q, a in zip(asks, animals)]

    def word_game(rng):
        task, words = rng.choice(sorted(WORD_TASKS)), rng.sample(WORDS, rng.randint(1, 3))
        asks = [f"{task} '{words[0]}'."] + [f"And '{w}'?" for w in words[1:]]
        return "You play word games.", [(q, WORD_TASKS[task](w)) for q, w in zip(asks, words)]

    rows = distinct(ROWS, lambda: {
        "conversations": chat(rng, [greet, sounds, word_game], ("from", "value"), ("system", "human", "gpt"))
    })
    text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    (RAW / "sharegpt.json").write_text(text, encoding="utf-8", newline="\n")


def messages(rng):
    def add(rng):
        a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 9)
        turns = [(f"Add {a} and {b}.", f"{a} + {b} = {a + b}."), (f"Now add {c} more.", f"{a + b} + {c} = {a + b + c}.")]
        return "You are a calculator.", turns[: rng.randint(1, 2)]

    def repeat(rng):
        word = rng.choice(WORDS)
        turns = [
            (f"Repeat the word '{word}' twice.", f"{word} {word}"),
            ("And reversed?", word[::-1]),
            ("And in capitals?", word.upper()),
        ]
        return "You play word games.", turns[: rng.randint(1, 3)]

    def colours(rng):
        fruits = rng.sample(sorted(COLOURS), rng.randint(1, 3))
        asks = [f"What colour is {an(fruits[0])}?"] + [f"And {an(f)}?" for f in fruits[1:]]
        return "You know the colours of fruit.", [(q, colour(f)) for q, f in zip(asks, fruits)]

    write_jsonl("messages.jsonl", distinct(ROWS, lambda: {
        "messages": chat(rng, [add, repeat, colours], ("role", "content"), ("system", "user", "assistant"))
    }))


def reasoning(rng):
    def make():
        word, kind = rng.choice(WORDS), rng.randrange(4)
        spelled = "-".join(word)
        if kind == 0:
            a, b = rng.randint(10, 49), rng.randint(10, 49)
            tens, ones = a // 10 * 10 + b // 10 * 10, a % 10 + b % 10
            problem, answer = f"What is {a} + {b}?", str(a + b)
            trace = f"{a} + {b}: tens {a // 10 * 10} + {b // 10 * 10} = {tens}, ones {a % 10} + {b % 10} = {ones}, {tens} + {ones} = {a + b}."
        elif kind == 1:
            problem, answer = f"How many letters are in '{word}'?", str(len(word))
            trace = f"Spell it: {spelled}. That is {len(word)} letters."
        elif kind == 2:
            problem, answer = f"What is '{word}' spelled backwards?", word[::-1]
            trace = f"Spell it: {spelled}. Backwards: {'-'.join(answer)}. Joined: {answer}."
        else:
            problem, answer = f"What is the last letter of '{word}'?", word[-1]
            trace = f"Spell it: {spelled}. The last letter is {answer}."
        solution = f"<think>\n{trace}\n</think>\n\nThe answer is {answer}."
        return {"problem": problem, "generated_solution": solution, "expected_answer": answer}

    write_jsonl("reasoning.jsonl", distinct(ROWS, make))


def main():
    RAW.mkdir(exist_ok=True)
    for write in (alpaca, sharegpt, messages, reasoning):
        write(random.Random(SEED))


if __name__ == "__main__":
    main()
