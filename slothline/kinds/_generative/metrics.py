"""Text metrics computed offline: sacrebleu (BLEU, chrF), rouge_score (ROUGE-1/2/L/Lsum), exact match,
and teacher-forced loss / perplexity on the tokens training learns (the answers with
train.train_on_responses_only, else the whole text). Scores are 0-100, except loss and perplexity.

BLEU and ROUGE count the tokens of `tokenize`, which works for any script: after NFKC normalisation,
a token is a word (a run of letters and digits with their combining marks, joined by - or ' between
letters and by . or , between digits: "state-of-the-art", "don't", "3.5"), one character of a script
written without spaces (CJK ideographs, kana, Thai, Lao, Khmer, Myanmar), or any other character
that is not a space (punctuation, symbols, emoji).
- BLEU: sacrebleu's corpus BLEU-4 on these tokens, case kept. On English this is close to
  sacrebleu's default 13a tokenizer, which leaves CJK text in one piece. As in sacrebleu, a corpus
  whose answers all have fewer than 4 tokens scores 0.
- ROUGE: lower case, punctuation turned into spaces, ASCII words longer than 3 letters Porter-stemmed,
  as rouge_score's own tokenizer does for English (it drops every other character, so Chinese or
  Russian scored 0); symbols and emoji are tokens.
- Exact match: texts normalised SQuAD-style (lower case, without punctuation, ASCII or Unicode such
  as "。" or "،", and without English articles) are equal.
"""

import math
import re
import string
import unicodedata

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Scripts written without spaces between words: each character is a token.
NO_SPACES = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029"
                       "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=RougeTokenizer())
    rouge = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    spaced = lambda texts: [" ".join(tokenize(text)) for text in texts]
    scores = {
        "bleu": sacrebleu.corpus_bleu(spaced(predictions), [spaced(references)], tokenize="none", force=True).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        **{name: 100 * sum(r[name].fmeasure for r in rouge) / len(rouge) for name in ROUGE_TYPES},
        "exact_match": 100 * sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / len(references),
    }
    return {name: round(value, 2) for name, value in scores.items()}


def tokenize(text: str) -> list[str]:
    """Words, single characters of scripts without spaces, and single other characters (see above)."""
    text = unicodedata.normalize("NFKC", text)
    tokens, in_word, after_token = [], False, False
    for i, char in enumerate(text):
        category = unicodedata.category(char)
        if (category[0] == "M" or category == "Cf") and after_token:  # marks and joiners stay on their character
            tokens[-1] += char
            continue
        if char.isspace():
            in_word = after_token = False
            continue
        following = text[i + 1 : i + 2]
        joins = in_word and (_is_letter(char) or (char in "-'’" and _is_letter(following))
                             or (char in ".," and tokens[-1][-1].isdigit() and following.isdigit()))
        if joins:
            tokens[-1] += char
        else:
            tokens.append(char)
        in_word, after_token = joins or _is_letter(char), True
    return tokens


def _is_letter(char: str) -> bool:
    """A letter or digit of a script that separates words with spaces."""
    return bool(char) and unicodedata.category(char)[0] in "LN" and not NO_SPACES.match(char)


class RougeTokenizer:
    """rouge_score's tokenizer interface: lower-cased tokens without punctuation, English words stemmed."""

    def __init__(self):
        from nltk.stem import porter

        self.stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        text = "".join(" " if is_punctuation(char) else char for char in text.lower())
        return [self.stemmer.stem(token) if token.isascii() and len(token) > 3 else token for token in tokenize(text)]


def is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize(text: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if not is_punctuation(ch))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def loss_metrics(token_losses_sum: float, token_count: int) -> dict[str, float | None]:
    """Mean loss per scored token and its perplexity; None for both when no token was scored."""
    if token_count == 0:
        return {"loss": None, "perplexity": None}
    loss = token_losses_sum / token_count
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 3)}
