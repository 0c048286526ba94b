import pytest

from slothline.data.mixing import content_key, dedupe, mix, normalised, quotas, sample, split
from slothline.errors import SlothlineError


def rows(name: str, n: int) -> list[dict]:
    return [{"id": f"{name}{i}", "source": name} for i in range(n)]


def test_quotas_follow_weights_of_total():
    assert quotas({"reasoning": 900, "chat": 900}, {"reasoning": 0.75, "chat": 0.25}, 1000) == {
        "reasoning": 750, "chat": 250}


def test_quotas_round_by_largest_remainder_to_the_exact_total():
    counts = quotas({"a": 50, "b": 50, "c": 50}, {"a": 1, "b": 1, "c": 1}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]


def test_quotas_without_total_take_the_largest_mix_the_sources_allow():
    # b limits the mix: 40 rows at weight 1 of 3 -> 120 in all, a gives 80.
    assert quotas({"a": 500, "b": 40}, {"a": 2, "b": 1}, None) == {"a": 80, "b": 40}


def test_quota_above_what_a_source_has_is_an_error_with_the_fix():
    with pytest.raises(SlothlineError, match=r"source 'b' has 10 usable rows .* lower data.total to at most 20"):
        quotas({"a": 100, "b": 10}, {"a": 1, "b": 1}, 60)


def test_sample_is_seeded_and_without_replacement():
    records = rows("a", 100)
    first, again, other = sample(records, 30, 1, "a"), sample(records, 30, 1, "a"), sample(records, 30, 2, "a")
    assert first == again and first != other
    assert len({r["id"] for r in first}) == 30


def test_split_sizes():
    parts = split(rows("a", 100), val_fraction=0.1, test_fraction=0.2)
    assert [len(parts[name]) for name in ("train", "val", "test")] == [70, 10, 20]
    assert not {r["id"] for r in parts["train"]} & {r["id"] for r in parts["test"]}


def test_mix_keeps_the_ratio_in_every_split_and_is_deterministic():
    by_source = {"reasoning": rows("reasoning", 500), "chat": rows("chat", 500)}
    weights = {"reasoning": 3, "chat": 1}
    splits = mix(by_source, weights, 400, 0.1, 0.1, seed=7)
    assert splits == mix(by_source, weights, 400, 0.1, 0.1, seed=7)
    for name, size in (("train", 320), ("val", 40), ("test", 40)):
        assert len(splits[name]) == size
        assert sum(r["source"] == "reasoning" for r in splits[name]) == size * 3 // 4
    ids = [r["id"] for part in splits.values() for r in part]
    assert len(ids) == len(set(ids))


def test_dedupe_keeps_first():
    kept, removed = dedupe([{"id": "x", "n": 1}, {"id": "y"}, {"id": "x", "n": 2}])
    assert removed == 1 and kept == [{"id": "x", "n": 1}, {"id": "y"}]


def test_dedupe_by_a_key_keeps_the_first_of_each():
    kept, removed = dedupe([{"id": "x", "k": 1}, {"id": "y", "k": 2}, {"id": "z", "k": 1}], key=lambda r: r["k"])
    assert removed == 1 and [r["id"] for r in kept] == ["x", "y"]


def test_normalised_text_ignores_whitespace_unicode_form_and_invisible_characters_but_keeps_case():
    assert normalised("  What is\t2+2? \n") == "What is 2+2?"
    assert normalised("caf\u00e9\u00a0au\u200b lait") == normalised("cafe\u0301 au lait") == "caf\u00e9 au lait"
    assert normalised("\uff21\uff22\uff23") == "ABC"  # full-width letters
    assert normalised("Paris") != normalised("paris")


def test_content_key_covers_every_text_of_a_record():
    chat = lambda question, answer: {"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}
    assert content_key(chat("Capital of France?", "Paris.")) == content_key(chat("Capital of France? ", " Paris.\n"))
    assert content_key(chat("Capital of France?", "Paris.")) != content_key(chat("Capital of France?", "Lyon."))
    parts = lambda text: {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                                     {"type": "text", "text": text}]},
                                       {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}
    assert content_key(parts("Colour?")) == content_key(parts("Colour?  ")) != content_key(parts("Shape?"))
    review = lambda text, label, **pair: {"text": text, **pair, "label": label}
    assert content_key(review("Great  product", "good")) == content_key(review("Great product", "good"))
    assert content_key(review("Great product", "good")) != content_key(review("Great product", "bad"))
    assert content_key(review("A", "same", text_pair="B")) != content_key(review("A", "same", text_pair="C"))


def test_a_split_asked_for_that_rounds_to_nothing_is_an_error_with_a_fix_that_works():
    with pytest.raises(SlothlineError) as caught:
        mix({"a": rows("a", 3)}, {"a": 1}, None, 0.0, 0.1, seed=1)
    assert str(caught.value) == ("data.test_fraction: 0.1 of 3 rows gives 0 test rows; "
                                 "raise data.test_fraction to at least 0.17, or add rows (at least 6)")
    assert len(mix({"a": rows("a", 3)}, {"a": 1}, None, 0.0, 0.17, seed=1)["test"]) == 1
    assert len(mix({"a": rows("a", 6)}, {"a": 1}, None, 0.0, 0.1, seed=1)["test"]) == 1


def test_small_sources_round_on_their_own():
    # 4 + 4 rows: 0.1 of each rounds to 0, although 0.1 of 8 would round to 1
    by_source, weights = {"a": rows("a", 40), "b": rows("b", 40)}, {"a": 1, "b": 1}
    with pytest.raises(SlothlineError) as caught:
        mix(by_source, weights, 8, 0.1, 0.0, seed=1)
    assert str(caught.value) == (
        "data.val_fraction: 0.1 of 8 rows gives 0 val rows (each source is split on its own: a 4, b 4); raise "
        "data.val_fraction to at least 0.13, or raise data.total to at least 12, or set data.val_fraction: 0 "
        "to train without validation")
    assert len(mix(by_source, weights, 8, 0.13, 0.0, seed=1)["val"]) == 2
    assert len(mix(by_source, weights, 12, 0.1, 0.0, seed=1)["val"]) == 2
    with pytest.raises(SlothlineError, match=r"add rows \(at least a 6, b 6\)"):
        mix({"a": rows("a", 4), "b": rows("b", 4)}, weights, None, 0.1, 0.0, seed=1)


def test_every_split_asked_for_is_reported_at_once():
    with pytest.raises(SlothlineError) as caught:
        mix({"a": rows("a", 3)}, {"a": 1}, None, 0.1, 0.1, seed=1)
    assert "data.val_fraction: 0.1 of 3 rows gives 0 val rows" in str(caught.value)
    assert "data.test_fraction: 0.1 of 3 rows gives 0 test rows" in str(caught.value)


def test_fraction_zero_means_no_such_split():
    splits = mix({"a": rows("a", 3)}, {"a": 1}, None, 0.0, 0.0, seed=1)
    assert (len(splits["train"]), splits["val"], splits["test"]) == (3, [], [])


def test_an_empty_train_split_is_an_error():
    with pytest.raises(SlothlineError, match=r"^data: the train split is empty \(2 rows: 1 val, 1 test\); lower "
                                             r"data.val_fraction or data.test_fraction, or add rows"):
        mix({"a": rows("a", 2)}, {"a": 1}, None, 0.3, 0.3, seed=1)
