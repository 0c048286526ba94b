"""Each metric against values worked out by hand on small inputs."""

import math

import pytest
import torch

from slothline.kinds._generative.metrics import loss_metrics, normalize, text_metrics, tokenize


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


def test_no_scored_tokens_give_no_loss():
    assert loss_metrics(0.0, 0) == {"loss": None, "perplexity": None}


@pytest.mark.parametrize(("text", "tokens"), [
    ("今天天气很好。", ["今", "天", "天", "气", "很", "好", "。"]),
    ("猫が好きです", ["猫", "が", "好", "き", "で", "す"]),
    ("Москва — столица России.", ["Москва", "—", "столица", "России", "."]),
    ("القاهرةُ عاصمة مصر، نعم", ["القاهرةُ", "عاصمة", "مصر", "،", "نعم"]),  # the damma stays on its word
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs are marks inside the word
    ("สวัสดี", ["ส", "วั", "ส", "ดี"]),  # Thai: one character (with its marks) per token
    ("I ❤️ 🍕, don't!", ["I", "❤️", "🍕", ",", "don't", "!"]),
    ("state-of-the-art: 3.5 and 1,000 (e.g.)", ["state-of-the-art", ":", "3.5", "and", "1,000", "(", "e", ".", "g", ".", ")"]),
    ("ｶﾀｶﾅ ＡＢＣ", ["カ", "タ", "カ", "ナ", "ABC"]),  # NFKC: half-width kana, full-width Latin
])
def test_tokenize_any_script(text, tokens):
    assert tokenize(text) == tokens


@pytest.mark.parametrize("text", ["今天天气很好，我们去公园散步。", "東京は日本の首都です。", "Москва — столица России.",
                                  "القاهرة هي عاصمة مصر.", "🐱 🐶 🐭 🐹 ❤️", "Ηλιόλουστη μέρα σήμερα στην Αθήνα"])
def test_identical_text_scores_100_in_any_script(text):
    assert set(text_metrics([text], [text]).values()) == {100.0}


@pytest.mark.parametrize(("prediction", "reference", "rouge1", "rouge2", "rougeL"), [
    # 3 of 4 characters; bigrams 我喜 喜欢 of 3; LCS 我喜欢
    ("我喜欢猫", "我喜欢狗", 75.0, 66.67, 75.0),
    # 5 of 6 characters; 4 of 5 bigrams
    ("猫が好きです", "犬が好きです", 83.33, 80.0, 83.33),
    # 3 of 4 words (no English stemming of Cyrillic); "на ковре" 1 of 3 bigrams; LCS кошка на ковре
    ("Кошка сидит на ковре.", "кошка спит на ковре", 75.0, 33.33, 75.0),
    ("ذهب الولد إلى المدرسة", "ذهب الولد إلى البيت", 75.0, 66.67, 75.0),
    ("🍕 🍣 🍔", "🍕 🍣 🌮", 66.67, 50.0, 66.67),
])
def test_rouge_by_hand_in_other_scripts(prediction, reference, rouge1, rouge2, rougeL):
    scores = text_metrics([prediction], [reference])
    assert (scores["rouge1"], scores["rouge2"], scores["rougeL"]) == (rouge1, rouge2, rougeL)
    assert 0 < scores["chrf"] < 100


def test_bleu_by_hand_on_characters():
    # 我 喜 欢 猫 vs 我 喜 欢 狗: precisions 3/4, 2/3, 1/2 and no 4-gram match, which sacrebleu's
    # exp smoothing counts as 1/(2*1); equal lengths
    score = text_metrics(["我喜欢猫"], ["我喜欢狗"])["bleu"]
    assert score == pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25, abs=0.01)


def test_english_rouge_keeps_the_stemmer_and_drops_punctuation():
    # cats/cat and running/run stem alike; "were" and "was" differ
    assert text_metrics(["The cats were running."], ["the cat was running"])["rouge1"] == 75.0
    # punctuation inside words splits them, as rouge_score does: don t / state of the art
    assert text_metrics(["don't stop state-of-the-art"], ["don t stop state of the art"])["rouge1"] == 100.0


@pytest.mark.parametrize(("prediction", "reference"), [
    ("你好。", "你好"), ("مرحبا،", "مرحبا"), ("Привет!", "привет"), ("「はい」", "はい"), ("Café", "café"),
])
def test_exact_match_in_any_script_ignores_unicode_punctuation(prediction, reference):
    assert normalize(prediction) == normalize(reference) != ""
    assert text_metrics([prediction], [reference])["exact_match"] == 100.0


def test_uniform_model_has_perplexity_equal_to_vocab_size(tiny_qwen3, tokenizer):
    """A model whose logits are all zero predicts uniformly: loss ln(V), perplexity V."""
    from transformers import AutoModelForCausalLM

    from slothline.kinds._generative import AnswerCollator
    from slothline.kinds._generative.chat import turn_markers
    from slothline.kinds._generative.generation import answer_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: embeddings too, so every logit is 0
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                           tokenize=False) for q, a in (("Hi", "Hello there"), ("2+2?", "4"))]
    batch = AnswerCollator(tokenizer, turn_markers(texts))([{"text": t} for t in texts])
    total, count = answer_loss(model, [batch], max_length=512)
    # labelled tokens: each answer after its empty think block (<think>, 2 newlines, </think>, 2 newlines),
    # plus its <|im_end|>, each predicted from the token before it
    assert count == sum(6 + len(tokenizer(a)["input_ids"]) + 1 for a in ("Hello there", "4"))
    assert loss_metrics(total, count)["perplexity"] == pytest.approx(model.config.vocab_size, rel=1e-4)


def test_tokens_an_answer_needs_count_what_the_model_generates(tokenizer):
    """references_longer_than_max_new_tokens compares max_new_tokens with the tokens after the prompt up to the
    end of the turn: a thinking block the prompt leaves open to the model counts, one it closes does not."""
    from slothline.kinds._generative import answer_tokens
    from slothline.kinds._generative.chat import render

    answer = "<think>\nweigh it\n</think>\n\nIt is 4."
    messages = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": answer}]
    length = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    stops = [tokenizer.eos_token_id]
    thinking = render(messages, tokenizer, "chat", enable_thinking=True)
    assert answer_tokens(tokenizer, thinking, stops) == length(answer) == length("<think>\nweigh it\n</think>\n\n") + 5
    plain = render([messages[0], {"role": "assistant", "content": "It is 4."}], tokenizer, "chat", enable_thinking=False)
    assert plain["text"].startswith(plain["prompt"]) and plain["prompt"].endswith("</think>\n\n")
    assert answer_tokens(tokenizer, plain, stops) == length("It is 4.")  # the prompt holds the (empty) block
    elsewhere = render(messages, tokenizer, "chat", enable_thinking=False)  # the text's block is not the prompt's
    assert not elsewhere["text"].startswith(elsewhere["prompt"])
    assert answer_tokens(tokenizer, elsewhere, stops) == length("It is 4.")  # the reference's own tokens
