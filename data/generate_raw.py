"""Write the small bundled sample datasets to data/raw/: alpaca.jsonl, sharegpt.json,
messages.jsonl and reasoning.jsonl, 300 rows each of short, highly templated tasks (greetings,
lookups in a small closed world, word games, small sums, comparisons) that the tiny builtin
model can visibly learn in a couple of minutes of CPU fine-tuning; and the preference samples
preference.jsonl (chosen/rejected pairs) and kto.jsonl (labelled answers), whose preferred answers
end with "!" where the SFT samples' end with ".", a rule SFT never teaches. The output is deterministic and
committed; rerun by hand (`python data/generate_raw.py`) when the samples change.

Every answer is a fixed template filled from the question: a name or word copied from it, or a
fact of the closed world below. Each source asks its first question in its own phrasing, and no
conversation of a source is the start of another one (system prompt aside), so a test row is never
a training row again: its facts and templates were seen in training, its wording or context not.
"""

import json
import random
from pathlib import Path

RAW = Path(__file__).resolve().parent / "raw"
SEED = 1234
ROWS = 300

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Leo", "Mia"]
WORDS = [
    "apple", "bird", "boat", "book", "cake", "cup", "dog", "egg", "flag", "hat", "kite", "lamp",
    "map", "moon", "pen", "star",
]
CAPITALS = {
    "Cuba": "Havana", "Egypt": "Cairo", "France": "Paris", "Greece": "Athens", "Italy": "Rome",
    "Japan": "Tokyo", "Kenya": "Nairobi", "Norway": "Oslo", "Peru": "Lima", "Spain": "Madrid",
}
SOUNDS = {
    "bee": "buzz", "cat": "meow", "cow": "moo", "dog": "woof", "duck": "quack",
    "frog": "croak", "lion": "roar", "owl": "hoot", "pig": "oink", "sheep": "baa",
}
COLOURS = {
    "apple": "red", "banana": "yellow", "cherry": "red", "coconut": "brown", "grape": "purple",
    "kiwi": "green", "lemon": "yellow", "lime": "green", "mango": "orange", "plum": "purple",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
GREETINGS = {  # what to say -> the greeting
    "hello": "Hello", "goodbye": "Goodbye", "good morning": "Good morning", "good evening": "Good evening",
    "good night": "Good night", "thank you": "Thank you",
}
MOST = 7  # sums stay small (totals up to 7): a table the tiny model can learn
SMALL_SUMS = [(a, b) for a in range(1, MOST) for b in range(1, MOST + 1 - a)]
WORD_GAMES = {  # what to do with the word -> the answer
    "copy": lambda w: w,
    "twice": lambda w: f"{w} {w}",
    "three times": lambda w: f"{w} {w} {w}",
    "plural": lambda w: w + "s",
}


def an(noun):
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def sound(animal):
    return f"{an(animal).capitalize()} says {SOUNDS[animal]}."


def colour(fruit):
    return f"{an(fruit).capitalize()} is {COLOURS[fruit]}."


def capital(country):
    return f"The capital of {country} is {CAPITALS[country]}."


def greeting(kind, name):
    return f"{GREETINGS[kind]}, {name}!"


def total(a, b):
    return f"{a} + {b} = {a + b}."


def distinct(n, make, prefix_free=False):
    """Call make() until it has produced n different rows; keep them in first-seen order.
    With prefix_free, rows are conversations and none may begin another one, system prompt aside."""
    rows, seen, cores = [], set(), []
    for _ in range(1000 * n):
        if len(rows) == n:
            return rows
        row = make()
        key = json.dumps(row, sort_keys=True)
        if key in seen:
            continue
        if prefix_free:
            core = [turn for turn in next(iter(row.values())) if turn[next(iter(turn))] not in ("system",)]
            if any(other[: len(core)] == core or core[: len(other)] == other for other in cores):
                continue
            cores.append(core)
        seen.add(key)
        rows.append(row)
    raise RuntimeError(f"only {len(rows)} different rows after {1000 * n} tries; widen the tasks")


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
    """Single-turn instructions, half of them with an `input`: every possible row of each task, shuffled."""
    rows = []
    for country in sorted(CAPITALS):
        rows += [(f"What is the capital of {country}?", "", capital(country)),
                 (f"Name the capital of {country}.", "", capital(country)),
                 (f"Which is the capital city of {country}?", "", capital(country)),
                 (f"Tell me the capital of {country}.", "", capital(country))]
    for animal in sorted(SOUNDS):
        rows += [(f"What sound does {an(animal)} make?", "", sound(animal)),
                 (f"What noise does {an(animal)} make?", "", sound(animal)),
                 (f"Which sound does {an(animal)} make?", "", sound(animal)),
                 (f"What does {an(animal)} sound like?", "", sound(animal))]
    for fruit in sorted(COLOURS):
        rows += [(f"What colour is {an(fruit)}?", "", colour(fruit)),
                 (f"Name the colour of {an(fruit)}.", "", colour(fruit)),
                 (f"What is the colour of {an(fruit)}?", "", colour(fruit)),
                 (f"Which colour is {an(fruit)}?", "", colour(fruit))]
    for name in NAMES:
        rows += [(f"Say {kind} to {name}.", "", greeting(kind, name)) for kind in GREETINGS]
        rows.append(("Greet this person.", name, greeting("hello", name)))
    for a, b in SMALL_SUMS:
        rows += [(f"What is {a} + {b}?", "", total(a, b)), ("Add the two numbers.", f"{a} and {b}", total(a, b))]
    for word in WORDS:
        rows += [("Copy the word.", word, word), ("Write the word twice.", word, WORD_GAMES["twice"](word)),
                 ("Write the word three times.", word, WORD_GAMES["three times"](word)),
                 ("Make the word plural.", word, WORD_GAMES["plural"](word))]
    rows = [{"instruction": i, "input": x, "output": o} for i, x, o in rng.sample(rows, ROWS - 3)]
    # Exactly 3 exact duplicates, on purpose, so the dedupe step has something to remove.
    for row in rng.sample(rows, 3):
        rows.insert(rng.randrange(len(rows) + 1), row)
    write_jsonl("alpaca.jsonl", rows)


def sharegpt(rng):
    def greet(rng):
        name, kinds = rng.choice(NAMES), rng.sample(sorted(GREETINGS), rng.randint(1, 3))
        asks = [f"Greet {name} with a {kinds[0]}." if kinds[0] == "hello" else f"Tell {name} {kinds[0]}."]
        asks += [f"Now say {kind}." for kind in kinds[1:]]
        return "You are a polite greeter.", [(q, greeting(k, name)) for q, k in zip(asks, kinds)]

    def sounds(rng):
        animals = rng.sample(sorted(SOUNDS), rng.randint(1, 3))
        asks = [f"What does {an(animals[0])} say?"] + [f"And {an(a)}?" for a in animals[1:]]
        return "You know the sounds animals make.", [(q, sound(a)) for q, a in zip(asks, animals)]

    def capitals(rng):
        countries = rng.sample(sorted(CAPITALS), rng.randint(1, 3))
        asks = [f"Which city is the capital of {countries[0]}?"] + [f"And {c}?" for c in countries[1:]]
        return "You know the capitals of the world.", [(q, capital(c)) for q, c in zip(asks, countries)]

    def word_game(rng):
        game, words = rng.choice(["twice", "plural"]), rng.sample(WORDS, rng.randint(1, 3))
        first = f"Say '{words[0]}' twice." if game == "twice" else f"What is the plural of '{words[0]}'?"
        asks = [first] + [f"And '{w}'?" for w in words[1:]]
        return "You play word games.", [(q, WORD_GAMES[game](w)) for q, w in zip(asks, words)]

    rows = distinct(ROWS, lambda: {
        "conversations": chat(rng, [greet, sounds, capitals, word_game], ("from", "value"), ("system", "human", "gpt"))
    }, prefix_free=True)
    text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    (RAW / "sharegpt.json").write_text(text, encoding="utf-8", newline="\n")


def messages(rng):
    def add(rng):
        a, b = rng.choice(SMALL_SUMS)
        turns = [(f"Add {a} and {b}.", total(a, b))]
        if a + b < MOST and rng.random() < 0.8:
            c = rng.randint(1, MOST - a - b)
            turns.append((f"Now add {c} more.", total(a + b, c)))
        return "You are a calculator.", turns

    def repeat(rng):
        word, games = rng.choice(WORDS), rng.sample(["twice", "three times", "plural"], rng.choice((0, 1, 1, 2, 2)))
        asks = {"twice": "Now twice.", "three times": "Now three times.", "plural": "And in the plural?"}
        turns = [(f"Repeat the word '{word}'.", word)] + [(asks[g], WORD_GAMES[g](word)) for g in games]
        return "You play word games.", turns

    def colours(rng):
        fruits = rng.sample(sorted(COLOURS), rng.choice((1, 2, 2, 3, 3)))
        asks = [f"Tell me the colour of {an(fruits[0])}."] + [f"And {an(f)}?" for f in fruits[1:]]
        return "You know the colours of fruit.", [(q, colour(f)) for q, f in zip(asks, fruits)]

    write_jsonl("messages.jsonl", distinct(ROWS, lambda: {
        "messages": chat(rng, [add, repeat, colours], ("role", "content"), ("system", "user", "assistant"))
    }, prefix_free=True))


def reasoning(rng):
    """Problems with a short <think> trace before the answer; about half answer straight away, with an
    empty <think> block, as Qwen3 does in non-thinking mode. Each problem comes once."""
    problems = []
    for a in range(1, 10):
        for b in range(1, 10):
            if a != b:
                trace = f"{max(a, b)} is more than {min(a, b)}."
                problems += [(f"Which is bigger, {a} or {b}?", trace, max(a, b)),
                             (f"Which is larger, {a} or {b}?", trace, max(a, b)),
                             (f"Which is smaller, {a} or {b}?", trace, min(a, b))]
    for a, b in SMALL_SUMS:
        problems += [(f"If you add {a} and {b}, what do you get?", total(a, b), a + b),
                     (f"What do {a} and {b} make together?", total(a, b), a + b)]
    for n in range(1, 9):
        trace = f"Counting up: {n}, {n + 1}."
        problems += [(f"What number comes after {n}?", trace, n + 1), (f"What number comes before {n + 1}?", trace, n)]
    for i, day in enumerate(DAYS):
        after, before = DAYS[(i + 1) % 7], DAYS[i - 1]
        problems += [(f"What day comes after {day}?", f"The week goes {day}, {after}.", after),
                     (f"Which day follows {day}?", f"The week goes {day}, {after}.", after),
                     (f"What day comes before {day}?", f"The week goes {before}, {day}.", before),
                     (f"Which day is just before {day}?", f"The week goes {before}, {day}.", before)]
    for animal in sorted(SOUNDS):
        problems += [(f"Which animal says {SOUNDS[animal]}?", sound(animal), animal),
                     (f"Which animal goes {SOUNDS[animal]}?", sound(animal), animal)]
    for country in sorted(CAPITALS):
        problems += [(f"{CAPITALS[country]} is the capital of which country?", capital(country), country),
                     (f"Which country has the capital {CAPITALS[country]}?", capital(country), country)]
    rows = []
    for problem, trace, answer in rng.sample(problems, ROWS):
        thinking = trace if rng.random() < 0.5 else ""
        rows.append({"problem": problem, "generated_solution": f"<think>\n{thinking}\n</think>\n\nThe answer is {answer}.",
                     "expected_answer": str(answer)})
    write_jsonl("reasoning.jsonl", rows)


def facts():
    """(question, answer) of every fact lookup and sum, in five wordings each (sums: three)."""
    rows = []
    for country in sorted(CAPITALS):
        rows += [(q.format(country), capital(country)) for q in (
            "What is the capital of {}?", "Name the capital of {}.", "Which city is the capital of {}?",
            "Tell me the capital of {}.", "{}: what is its capital?")]
    for animal in sorted(SOUNDS):
        rows += [(q.format(an(animal)), sound(animal)) for q in (
            "What sound does {} make?", "What noise does {} make?", "How does {} sound?",
            "What does {} sound like?", "Which sound comes from {}?")]
    for fruit in sorted(COLOURS):
        rows += [(q.format(an(fruit)), colour(fruit)) for q in (
            "What colour is {}?", "Name the colour of {}.", "What is the colour of {}?",
            "Which colour is {}?", "Tell me the colour of {}.")]
    for a, b in SMALL_SUMS:
        rows += [(f"What is {a} + {b}?", total(a, b)), (f"Add {a} and {b}.", total(a, b)),
                 (f"How much is {a} plus {b}?", total(a, b))]
    return rows


def cheerful(answer):
    """The preferred form of an answer: its final full stop an exclamation mark."""
    return answer[:-1] + "!"


def preference(rng):
    """Paired rows in the three layouts preference datasets use: prompt, chosen and rejected as text; as
    messages (a system prompt in some); and whole conversations without a prompt (binarized feedback style)."""
    rows = []
    for i, (question, answer) in enumerate(rng.sample(facts(), len(facts()))):
        good, bad = cheerful(answer), answer
        if i % 3 == 0:
            rows.append({"prompt": question, "chosen": good, "rejected": bad})
        elif i % 3 == 1:
            system = [{"role": "system", "content": "You are a cheerful assistant."}] if i % 2 else []
            rows.append({"prompt": [*system, {"role": "user", "content": question}],
                         "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})
        else:
            user = {"role": "user", "content": question}
            rows.append({"chosen": [user, {"role": "assistant", "content": good}],
                         "rejected": [user, {"role": "assistant", "content": bad}]})
    write_jsonl("preference.jsonl", rows)


def kto(rng):
    """Unpaired rows: each question's cheerful answer labelled desirable and its plain one not; for every third
    question only one of the two (alternately)."""
    rows = []
    for i, (question, answer) in enumerate(rng.sample(facts(), len(facts()))):
        labelled = [(cheerful(answer), True), (answer, False)]
        for completion, label in labelled if i % 3 else labelled[i % 2 : i % 2 + 1]:
            rows.append({"prompt": question, "completion": completion, "label": label})
    write_jsonl("kto.jsonl", rows)


def main():
    RAW.mkdir(exist_ok=True)
    for write in (alpaca, sharegpt, messages, reasoning, preference, kto):
        write(random.Random(SEED))


if __name__ == "__main__":
    main()
