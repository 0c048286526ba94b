"""Each metric against values worked out by hand on small inputs."""

import math

import pytest
import torch

from stages.lib.metrics import loss_metrics, normalize, text_metrics


def test_bleu_by_hand():
    # Precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (no brevity penalty): (5/6*3/5*2/4*1/3) ** (1/4).
    score = text_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])["bleu"]
    assert score == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=0.01)


def test_rouge_by_hand():
    scores = text_metrics(["the cat sat"], ["the cat ran"])
    assert scores["rouge1"] == pytest.approx(66.67, abs=0.01)  # 2 of 3 unigrams both ways
    assert scores["rouge2"] == pytest.approx(50.0)  # "the cat" of 2 bigrams
    assert scores["rougeL"] == pytest.approx(66.67, abs=0.01)  # LCS "the cat"
    assert scores["rougeLsum"] == pytest.approx(66.67, abs=0.01)


def test_rouge_is_averaged_over_samples():
    assert text_metrics(["a b", "x y"], ["a b", "c d"])["rouge1"] == pytest.approx(50.0)


def test_chrf_bounds():
    assert text_metrics(["identical text"], ["identical text"])["chrf"] == pytest.approx(100.0)
    assert text_metrics(["xyz"], ["abc"])["chrf"] == 0.0


def test_exact_match_is_normalized():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert text_metrics(["The cat.", "dog", "a bird"], ["the cat", "Dog!", "fish"])["exact_match"] == pytest.approx(66.67, abs=0.01)


def test_loss_and_perplexity():
    assert loss_metrics(2 * math.log(4), 2) == {"loss": round(math.log(4), 4), "perplexity": 4.0}


def test_uniform_model_has_perplexity_equal_to_vocab_size(tokenizer):
    """A model whose logits are all zero predicts uniformly: loss ln(V), perplexity V."""
    from stages.lib.generate import answer_loss
    from stages.lib.models import resolve_model
    from stages.lib.templates import tokenize_for_training, turn_markers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-qwen3"))
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: embeddings too, so every logit is 0
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                           tokenize=False) for q, a in (("Hi", "Hello there"), ("2+2?", "4"))]
    dataset = tokenize_for_training([{"text": t} for t in texts], tokenizer, turn_markers(texts))
    total, count = answer_loss(model, dataset, tokenizer.pad_token_id, batch_size=2, max_length=512)
    # labelled tokens: each answer after its empty think block (<think>, 2 newlines, </think>, 2 newlines),
    # plus its <|im_end|>, each predicted from the token before it
    assert count == sum(6 + len(tokenizer(a)["input_ids"]) + 1 for a in ("Hello there", "4"))
    assert loss_metrics(total, count)["perplexity"] == pytest.approx(model.config.vocab_size, rel=1e-4)
