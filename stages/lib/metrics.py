"""Text metrics computed offline: sacrebleu (BLEU, chrF), rouge_score (ROUGE-1/2/L/Lsum), exact match,
and teacher-forced loss / perplexity on the tokens training learns (the answers with
train.train_on_responses_only, else the whole text). Scores are 0-100, except loss and perplexity."""

import math
import re
import string

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rouge = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    scores = {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        **{name: 100 * sum(r[name].fmeasure for r in rouge) / len(rouge) for name in ROUGE_TYPES},
        "exact_match": 100 * sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / len(references),
    }
    return {name: round(value, 2) for name, value in scores.items()}


def normalize(text: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def loss_metrics(token_losses_sum: float, token_count: int) -> dict[str, float]:
    loss = token_losses_sum / token_count
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 3)}
