"""Batched generation and the evaluate stage's results and errors."""

import json

import pytest

from stages.lib.errors import SlothlineError


@pytest.fixture(scope="module")
def tiny_model():
    from stages.lib.models import resolve_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-qwen3"))
    model.eval()
    return model


PROMPTS = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
           for q in ("Hi", "Reverse the word 'apple'.", "What is 2 + 2?", "Say hello to Anna, then to Ben.")]


def test_batched_generation_equals_one_at_a_time(tiny_model, tokenizer):
    from stages.lib.generate import generate

    batched = generate(tiny_model, tokenizer, PROMPTS, batch_size=4, max_new_tokens=12)
    single = [generate(tiny_model, tokenizer, [p], batch_size=1, max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single and any(batched)


def test_tokenizer_without_pad_token_pads_with_eos(tiny_model, tokenizer):
    from stages.lib.generate import generate

    no_pad = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    no_pad.pad_token = None
    assert generate(tiny_model, no_pad, PROMPTS[:2], 2, 8) == generate(tiny_model, tokenizer, PROMPTS[:2], 2, 8)
    assert no_pad.pad_token == no_pad.eos_token


def write_prepared(workdir, test_rows: list[dict]):
    from stages import prepare

    rows = [{"instruction": f"Repeat {w}.", "output": f"{w} {w}"} for w in ("cat", "dog", "sun", "sky", "sea")]
    workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", rows), "format": "alpaca"}], test_fraction=0.4)
    prepare.main()
    (workdir.path / "data/prepared/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))


def test_empty_test_split_is_a_clear_error(workdir):
    from stages import evaluate

    write_prepared(workdir, [])
    with pytest.raises(SlothlineError, match="the test split is empty; set data.test_fraction > 0"):
        evaluate.main()


def test_missing_adapter_is_a_clear_error(workdir):
    from stages import evaluate

    write_prepared(workdir, [{"prompt": "x", "reference": "y", "text": "z", "messages": []}])
    with pytest.raises(SlothlineError, match="models/adapter: no trained adapter or model there; run `dvc repro train`"):
        evaluate.main()


def test_zero_max_samples_is_refused(workdir):
    from stages.lib.params import load_params

    (workdir.path / "params.yaml").write_text(
        "data: {sources: [{path: a.jsonl, format: alpaca}]}\nevaluate: {max_samples: 0}\n")
    with pytest.raises(SlothlineError, match=r"evaluate.max_samples: Input should be greater than or equal to 1"):
        load_params()


def test_report_lists_metrics_deltas_and_samples():
    from stages.evaluate import report

    results = {"tuned": {"rougeL": 40.0}, "base": {"rougeL": 10.0}, "delta": {"rougeL": 30.0}, "samples": 1}
    text = report(results, [{"prompt": "a|b", "reference": "r", "base": "x", "tuned": "y\nz"}], "builtin:tiny-qwen3 + adapter")
    assert text.startswith("# Evaluation of builtin:tiny-qwen3 + adapter on 1 test samples")
    assert "| rougeL | 40 | 10 | +30 |" in text
    assert "| a\\|b | r | x | y<br>z |" in text


def test_sampling_repeats_with_the_same_seed(tiny_model, tokenizer):
    from stages.lib.generate import generate

    chosen = {"do_sample": True, "temperature": 1.5, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
    sample = lambda seed: generate(tiny_model, tokenizer, PROMPTS, 4, 12, chosen, seed=seed)
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_report_shows_both_charts():
    from stages.evaluate import report

    text = report({"tuned": {"rougeL": 1.0}, "samples": 1}, [], "m")
    assert "![Base vs tuned](eval.png)" in text and "![Training loss](loss.png)" in text


def test_metrics_chart_and_loss_curve_are_pngs(tmp_path):
    from PIL import Image

    from stages.lib import plots

    results = {"tuned": {"exact_match": 60.0, "rougeL": 80.0, "loss": 1.0}, "base": {"exact_match": 0.0, "rougeL": 2.0,
                                                                                      "loss": 6.0}}
    plots.metrics_chart(results, tmp_path / "eval.png")
    history = [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 2.5}]
    plots.loss_curve(history, tmp_path / "loss.png")
    for name in ("eval.png", "loss.png"):
        assert Image.open(tmp_path / name).size == (640, 360)
    first = (tmp_path / "eval.png").read_bytes()
    plots.metrics_chart(results, tmp_path / "eval.png")
    assert (tmp_path / "eval.png").read_bytes() == first  # same data, same bytes: DVC sees no change


GREEDY = {"do_sample": False, "repetition_penalty": 1.0}


def sampled(**knobs) -> dict:
    return {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            **knobs}


@pytest.mark.parametrize("knobs", [{"top_k": 1}, {"min_p": 0.999}, {"top_p": 1e-6}])
def test_sampling_knobs_that_keep_only_the_likeliest_token_decode_greedily(tiny_model, tokenizer, knobs):
    from stages.lib.generate import generate

    greedy = generate(tiny_model, tokenizer, PROMPTS, 4, 12, GREEDY)
    assert generate(tiny_model, tokenizer, PROMPTS, 4, 12, sampled(temperature=5.0, **knobs), seed=1) == greedy
    assert generate(tiny_model, tokenizer, PROMPTS, 4, 12, sampled(temperature=5.0), seed=1) != greedy


def test_repetition_penalty_changes_greedy_answers(tiny_model, tokenizer):
    from stages.lib.generate import generate

    plain = generate(tiny_model, tokenizer, PROMPTS, 4, 24, GREEDY)
    assert generate(tiny_model, tokenizer, PROMPTS, 4, 24, {**GREEDY, "repetition_penalty": 50.0}) != plain


def test_decoding_comes_from_params_or_the_model_generation_config():
    from transformers import GenerationConfig

    from stages.lib.generate import decoding, ignored_knobs
    from stages.lib.params import EvaluateParams

    qwen3 = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    own = EvaluateParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.1, repetition_penalty=1.05)
    assert decoding(own, qwen3) == {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.1,
                                    "repetition_penalty": 1.05}
    assert decoding(EvaluateParams(), qwen3)["do_sample"] is False  # temperature 0: greedy
    model = EvaluateParams(sampling="model")
    assert decoding(model, qwen3) == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0,
                                      "repetition_penalty": 1.0}
    assert ignored_knobs(model) == [] and ignored_knobs(EvaluateParams(sampling="model", top_k=5)) == ["evaluate.top_k"]


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("top_k", -1, "greater than or equal to 0"), ("min_p", 1.0, "less than 1"),
    ("repetition_penalty", 0, "greater than 0"), ("sampling", "auto", "must be one of 'params' or 'model'"),
])
def test_decoding_knobs_out_of_range_name_the_key(tmp_path, knob, value, message):
    from stages.lib.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text(f"data: {{sources: [{{path: a.jsonl, format: alpaca}}]}}\nevaluate: {{{knob}: {value}}}\n")
    with pytest.raises(SlothlineError, match=f"evaluate.{knob}: .*{message}"):
        load_params(path)
