"""Batched generation and the evaluate stage's results and errors."""

import json

import pytest

from slothline.artifacts import (CONFUSION_FILE, EVAL_CHART, EVAL_METRICS, LOSS_PLOT, PREPARED_DIR, REPORT_FILE,
                                 SAMPLES_FILE, TUNED_DIR, Manifest)
from slothline.errors import SlothlineError
from slothline.params import load_params
from tests.conftest import compiled_decode_against_sdpa, evaluating, write_params


@pytest.fixture(scope="module")
def tiny_model(tiny_qwen3):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    model.eval()
    return model


PROMPTS = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
           for q in ("Hi", "Reverse the word 'apple'.", "What is 2 + 2?", "Say hello to Anna, then to Ben.")]


def test_batched_generation_equals_one_at_a_time(tiny_model, tokenizer):
    from slothline.kinds._generative.generation import generate

    batched = generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 12))
    single = [generate(tiny_model, tokenizer, [p], evaluating(1, 12))[0] for p in PROMPTS]
    assert batched == single and any(batched)


def test_tokenizer_without_pad_token_pads_with_eos(tiny_model, tokenizer):
    from slothline.kinds._generative.generation import generate

    no_pad = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    no_pad.pad_token = None
    assert generate(tiny_model, no_pad, PROMPTS[:2], evaluating(2, 8)) == generate(tiny_model, tokenizer, PROMPTS[:2], evaluating(2, 8))
    assert no_pad.pad_token == no_pad.eos_token


def write_prepared(workdir, test_rows: list[dict] | None = None, **sections):
    """Prepared splits of five rows (two of them test, or `test_rows`), then params with `sections` too."""
    from stages import prepare

    rows = [{"instruction": f"Repeat {w}.", "output": f"{w} {w}"} for w in ("cat", "dog", "sun", "sky", "sea")]
    params = workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", rows), "format": "alpaca"}],
                                  test_fraction=0.4)
    prepare.main()
    if test_rows is not None:
        (workdir.path / PREPARED_DIR / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    if sections:
        write_params(workdir.path, data=params["data"], **sections)


def test_empty_test_split_is_a_clear_error(workdir):
    from stages import evaluate

    write_prepared(workdir, [])
    with pytest.raises(SlothlineError, match="the test split is empty; set data.test_fraction > 0"):
        evaluate.main()


def test_missing_tuned_model_is_a_clear_error(workdir):
    from stages import evaluate

    write_prepared(workdir, [{"prompt": "x", "reference": "y", "text": "z", "messages": []}])
    with pytest.raises(SlothlineError, match=f"^{TUNED_DIR}: no trained model there; run `dvc repro preference` first"):
        evaluate.main()


def test_zero_max_samples_is_refused(workdir):
    write_params(workdir.path, evaluate={"max_samples": 0})
    with pytest.raises(SlothlineError, match=r"evaluate.max_samples: Input should be greater than or equal to 1"):
        load_params()


def test_report_lists_metrics_deltas_and_samples():
    from slothline.report import deltas, report

    results = {"tuned": {"rougeL": 40.0, "loss_on": "answers"}, "base": {"rougeL": 10.0, "loss_on": "answers"},
               "samples": 1}
    results["delta"] = deltas(results["tuned"], results["base"])
    assert results["delta"] == {"rougeL": 30.0}
    text = report(results, [{"prompt": "a|b", "reference": "r", "base": "x", "tuned": "y\nz"}],
                  "builtin:tiny-qwen3 + adapter", "## Per class\n")
    assert text.startswith("# Evaluation of builtin:tiny-qwen3 + adapter on 1 test samples")
    assert "| rougeL | 40 | 10 | +30 |" in text
    assert "| loss_on | answers | answers | n/a |" in text
    assert "| a\\|b | r | x | y<br>z |" in text
    assert text.endswith("|\n## Per class\n")  # what the kind adds comes last


def test_deltas_skip_what_is_not_a_number_in_both():
    from slothline.report import deltas

    assert deltas({"loss": 1.5, "bleu": 3.0, "loss_on": "answers"}, {"loss": None, "bleu": 1.25, "loss_on": "answers"}) \
        == {"bleu": 1.75}


def test_sampling_repeats_with_the_same_seed(tiny_model, tokenizer):
    from slothline.kinds._generative.generation import generate

    chosen = {"do_sample": True, "temperature": 1.5, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
    sample = lambda seed: generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 12, seed), chosen)
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_report_shows_both_charts():
    from slothline.report import report

    text = report({"tuned": {"rougeL": 1.0}, "samples": 1}, [], "m", "")
    assert (REPORT_FILE.parent == EVAL_CHART.parent == LOSS_PLOT.parent)  # report.md links them beside it
    assert f"![Base vs tuned]({EVAL_CHART.name})" in text and f"![Training loss]({LOSS_PLOT.name})" in text


def test_metrics_chart_and_loss_curve_are_pngs(tmp_path):
    from PIL import Image

    from slothline import plots

    chart, loss = tmp_path / EVAL_CHART.name, tmp_path / LOSS_PLOT.name
    results = {"tuned": {"exact_match": 60.0, "rougeL": 80.0, "loss": 1.0}, "base": {"exact_match": 0.0, "rougeL": 2.0,
                                                                                      "loss": 6.0}}
    plots.metrics_chart(results, chart)
    history = [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 2.5}]
    plots.loss_curve(history, loss)
    for path in (chart, loss):
        assert Image.open(path).size == (640, 360)
    first = chart.read_bytes()
    plots.metrics_chart(results, chart)
    assert chart.read_bytes() == first  # same data, same bytes: DVC sees no change


GREEDY = {"do_sample": False, "repetition_penalty": 1.0}


def sampled(**knobs) -> dict:
    return {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            **knobs}


@pytest.mark.parametrize("knobs", [{"top_k": 1}, {"min_p": 0.999}, {"top_p": 1e-6}])
def test_sampling_knobs_that_keep_only_the_likeliest_token_decode_greedily(tiny_model, tokenizer, knobs):
    from slothline.kinds._generative.generation import generate

    greedy = generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 12), GREEDY)
    assert generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 12, 1), sampled(temperature=5.0, **knobs)) == greedy
    assert generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 12, 1), sampled(temperature=5.0)) != greedy


def test_repetition_penalty_changes_greedy_answers(tiny_model, tokenizer):
    from slothline.kinds._generative.generation import generate

    plain = generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 24), GREEDY)
    assert generate(tiny_model, tokenizer, PROMPTS, evaluating(4, 24), {**GREEDY, "repetition_penalty": 50.0}) != plain


def test_decoding_comes_from_params_or_the_model_generation_config():
    from transformers import GenerationConfig

    from slothline.kinds._generative.generation import GENERATE_DEFAULTS, decoding, ignored_knobs
    from slothline.kinds._generative.params import GenerationEvaluate as EvaluateParams

    qwen3 = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    own = EvaluateParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.1, repetition_penalty=1.05)
    assert decoding(own, qwen3) == {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.1,
                                    "repetition_penalty": 1.05}
    assert decoding(EvaluateParams(), qwen3)["do_sample"] is False  # temperature 0: greedy
    model = EvaluateParams(sampling="model")
    assert decoding(model, qwen3) == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0,
                                      "repetition_penalty": 1.0}
    assert ignored_knobs(model) == [] and ignored_knobs(EvaluateParams(sampling="model", top_k=5)) == ["evaluate.top_k"]
    # knobs the model's file leaves unset (Llama 3's sets temperature and top_p) are what model.generate() uses
    llama3 = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9)
    assert decoding(model, llama3) == {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 50, "min_p": 0.0,
                                       "repetition_penalty": 1.0}
    transformers_own = GenerationConfig._get_default_generation_params()
    assert {k: transformers_own.get(k) or 0.0 for k in GENERATE_DEFAULTS} == GENERATE_DEFAULTS


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("top_k", -1, "greater than or equal to 0"), ("min_p", 1.0, "less than 1"),
    ("repetition_penalty", 0, "greater than 0"), ("sampling", "auto", "must be one of 'params' or 'model'"),
])
def test_decoding_knobs_out_of_range_name_the_key(tmp_path, knob, value, message):
    write_params(tmp_path, evaluate={knob: value})
    with pytest.raises(SlothlineError, match=f"evaluate.{knob}: .*{message}"):
        load_params(tmp_path / "params.yaml")


def rendered_rows(tokenizer, pairs) -> list[dict]:
    from slothline.kinds._generative.chat import render

    rows = []
    for i, (question, answer) in enumerate(pairs):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": str(i), "source": "a", "messages": messages, **render(messages, tokenizer, "chat", False)})
    return rows


def test_the_kind_evaluates_tuned_and_base_into_one_evaluation(tiny_model, tokenizer, tmp_path, monkeypatch):
    from contextlib import contextmanager

    from slothline import kinds
    from slothline.kinds import Evaluation, _generative
    from tests.conftest import load

    plans = []  # both passes generate the batches planned once, before the first
    monkeypatch.setattr(_generative, "plan",
                        lambda *args, plan=_generative.plan: plans.append(plan(*args)) or plans[-1])

    task = kinds.get("causal_lm")
    rows = rendered_rows(tokenizer, [("Repeat cat.", "cat cat"), ("What is 2 + 2?", "4")])
    params = load(evaluate={"max_new_tokens": 6, "batch_size": 2})
    entered = []

    @contextmanager
    def base():
        entered.append(True)
        yield tiny_model

    evaluation = task.evaluate(tiny_model, tokenizer, rows, params, base, tmp_path)
    assert isinstance(evaluation, Evaluation) and entered == [True] and len(plans) == 1
    assert set(evaluation.metrics) == {"tuned", "base"}
    tuned = evaluation.metrics["tuned"]
    assert {"bleu", "chrf", "rougeL", "exact_match", "loss", "perplexity"} <= set(tuned)
    assert tuned["loss_on"] == "answers" and tuned["loss_tokens"] > 0
    assert evaluation.metrics["base"] == tuned  # the same weights score the same
    answers = task.predict(tiny_model, tokenizer, rows, params)
    assert evaluation.samples == [{"id": row["id"], "prompt": row["messages"][0]["content"],
                                   "reference": row["reference"], "tuned": answer, "base": answer}
                                  for row, answer in zip(rows, answers)]
    assert evaluation.confusion == {} and evaluation.report_sections == ""
    assert evaluation.settings == {"max_new_tokens": 6, "seed": params.evaluate.seed, "sampling": "params",
                                   "do_sample": False, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                   "repetition_penalty": 1.0, "batch_rows": 2, "kv_cache": "dynamic",
                                   "adapter_merged": False}
    alone = task.evaluate(tiny_model, tokenizer, rows, params, None, tmp_path)
    assert set(alone.metrics) == {"tuned"} and all("base" not in sample for sample in alone.samples)
    assert alone.metrics["tuned"] == tuned


def test_the_loss_is_scored_before_generating_changes_the_weights(tiny_model, tokenizer):
    """On a GPU, generating merges the LoRA adapter into the weights in place and unmerges it after, which rounds
    16-bit weights: each model's loss (and the kind's own scores) come first, so they are the adapter's own."""
    import copy

    import torch

    from slothline.kinds import _generative
    from slothline.kinds.causal_lm import answers
    from tests.conftest import load

    rows = rendered_rows(tokenizer, [("Repeat cat.", "cat cat"), ("What is 2 + 2?", "4")])
    params = load(evaluate={"max_new_tokens": 4, "batch_size": 2})
    sample = lambda row, answered: answered
    model = copy.deepcopy(tiny_model)
    scored_after = []

    def rounding(model, *args):  # generates, then leaves the weights changed, as unmerging in bfloat16 does
        answered = answers(model, *args)
        with torch.no_grad():
            for weight in model.parameters():
                weight.mul_(1.01)
        return answered

    def weights_seen(model):
        scored_after.append(next(model.parameters()).sum().item())
        return {}

    no_pad = copy.deepcopy(tokenizer)  # Llama-style: no pad token (evaluate pads with EOS, the loss batches too)
    no_pad.pad_token = None
    plain = _generative.evaluate(answers, model, no_pad, rows, params, None, sample).metrics["tuned"]
    before = next(model.parameters()).sum().item()
    rounded = _generative.evaluate(rounding, model, tokenizer, rows, params, None, sample,
                                   more_metrics=weights_seen).metrics["tuned"]
    assert rounded["loss"] == plain["loss"] and rounded["loss_tokens"] == plain["loss_tokens"]
    assert scored_after == [before] and next(model.parameters()).sum().item() != before


def test_prompts_whose_answers_pass_the_context_are_named_in_a_note(tiny_model, tokenizer, capsys):
    import copy

    from slothline.kinds import _generative
    from slothline.kinds.causal_lm import answers
    from tests.conftest import load

    rows = rendered_rows(tokenizer, [("Repeat cat.", "cat cat"), ("What is two plus two, in words?", "four")])
    prompts = [len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]) for row in rows]
    model = copy.deepcopy(tiny_model)
    model.config.max_position_embeddings = max(prompts) + 3  # the longer prompt's 4 new tokens pass it
    _generative.evaluate(answers, model, tokenizer, rows, load(evaluate={"max_new_tokens": 4}), None, lambda r, a: a)
    assert (f"note: 1 of 2 test prompts, with evaluate.max_new_tokens (4) after them, pass the model's context "
            f"({max(prompts) + 3} tokens, max_position_embeddings; the longest prompt takes {max(prompts)})"
            in capsys.readouterr().out)
    assert min(prompts) + 4 <= max(prompts) + 3  # the shorter one fits


def test_evaluate_writes_metrics_samples_and_report(workdir, tiny_qwen3):
    """A fully fine-tuned model (here: the base itself) through the evaluate stage: every file it declares, with
    tuned, base and delta groups."""
    import shutil

    from stages import evaluate

    write_prepared(workdir, evaluate={"max_new_tokens": 4, "compare_base": True})
    shutil.copytree(tiny_qwen3, workdir.path / TUNED_DIR)
    Manifest(kind="causal_lm", method="full", base_model="builtin:tiny-qwen3", revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=512).write(workdir.path / TUNED_DIR)
    evaluate.main()
    results = json.loads((workdir.path / EVAL_METRICS).read_text())
    assert results["samples"] == len(workdir.read_split("test")) == 2
    assert results["tuned"] == results["base"] and set(results["delta"].values()) == {0}
    assert results["settings"]["max_new_tokens"] == 4
    samples = json.loads((workdir.path / SAMPLES_FILE).read_text())
    assert [sample["reference"] for sample in samples] == [row["reference"] for row in workdir.read_split("test")]
    assert json.loads((workdir.path / CONFUSION_FILE).read_text()) == []
    report = (workdir.path / REPORT_FILE).read_text()
    assert report.startswith("# Evaluation of the fine-tuned model on 2 test samples")
    longer = results["tuned"]["references_longer_than_max_new_tokens"]
    assert f"| references_longer_than_max_new_tokens | {longer} | {longer} | +0 |" in report
    assert (workdir.path / EVAL_CHART).is_file()


def test_references_longer_than_max_new_tokens_are_counted_with_the_setting_they_need(tiny_model, tokenizer, tmp_path,
                                                                                    capsys):
    """Generation stops at evaluate.max_new_tokens: a longer reference cannot be matched, so each model's metrics
    count them and a note names the setting that lets every answer finish."""
    from slothline import kinds
    from tests.conftest import load

    task = kinds.get("causal_lm")
    long_answer = "one two three four five six seven eight nine ten"
    rows = rendered_rows(tokenizer, [("Repeat cat.", "cat"), ("Count to ten.", long_answer),
                                     ("Count to five.", "one two three four five")])
    needed = len(tokenizer(long_answer, add_special_tokens=False)["input_ids"])
    short = len(tokenizer("one two three four five", add_special_tokens=False)["input_ids"])
    params = load(evaluate={"max_new_tokens": short, "batch_size": 3})
    evaluation = task.evaluate(tiny_model, tokenizer, rows, params, lambda: _same(tiny_model), tmp_path)
    assert {name: m["references_longer_than_max_new_tokens"] for name, m in evaluation.metrics.items()} \
        == {"tuned": 1, "base": 1}
    note = capsys.readouterr().out
    assert (f"note: 1 of 3 test references are longer than evaluate.max_new_tokens ({short} tokens; the longest "
            f"takes {needed})") in note and f"set evaluate.max_new_tokens: {needed} " in note
    enough = task.evaluate(tiny_model, tokenizer, rows, load(evaluate={"max_new_tokens": needed}), None, tmp_path)
    assert enough.metrics["tuned"]["references_longer_than_max_new_tokens"] == 0
    assert "evaluate.max_new_tokens" not in capsys.readouterr().out


def _same(model):
    from contextlib import nullcontext

    return nullcontext(model)


def test_grouped_attention_decodes_as_sdpa(tiny_qwen3, tokenizer, monkeypatch):
    """The GPU's decode attention (query heads folded onto their shared key/value head) gives sdpa's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from slothline.backends import attention

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3).eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

    def logits():
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, cache_implementation="static")
        return out.sequences, torch.stack(out.logits)

    sequences, reference = logits()
    folded = []
    function = attention.grouped_query_attention
    monkeypatch.setattr(attention, "grouped_query_attention",
                        lambda module, query, *a, **k: folded.append(query.shape[2] == 1) or function(module, query, *a, **k))
    model.set_attn_implementation(attention.register_grouped_attention())
    grouped_sequences, grouped = logits()
    assert any(folded) and not all(folded)  # decode steps folded, the prefill through sdpa
    assert torch.equal(grouped_sequences, sequences)
    assert torch.allclose(grouped, reference, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [2, 8])
def test_compiled_decode_steps_attend_through_flex_attention_as_sdpa(kv_heads):
    """Compiled decode steps (the static cache's, compiled here on the CPU) attend through FlexAttention over the key
    blocks that hold keys to attend, grouped (2 key/value heads for 8 query heads) or not: rows left-padded past
    whole key blocks, and the cache's unwritten tail, give sdpa's greedy tokens and logits."""
    import torch

    used, (flex_sequences, flex), (sequences, reference) = compiled_decode_against_sdpa(
        head_dim=16, heads=8, kv_heads=kv_heads, device="cpu", dtype=torch.float32)
    assert used
    assert torch.equal(flex_sequences, sequences)
    assert torch.allclose(flex, reference, atol=1e-5)


def test_static_cache_filled_batches_and_a_merged_adapter_answer_as_the_plain_path(tiny_qwen3, tokenizer):
    """The GPU's plan (a static cache, every batch filled to one shape, the adapter merged in place, the norms and
    MLPs compiled) gives the answers of the plain path (dynamic cache, adapter unmerged), leaves the adapter
    unmerged, and the teacher-forced loss after it (through the compiled norms and MLPs) is the loss before."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slothline.kinds._generative.generation import Plan, generate, summed_loss

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen3),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    model.eval()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    encoded = dict(tokenizer(PROMPTS, return_tensors="pt", padding=True))
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    loss = summed_loss(model, encoded, labels)
    plain = generate(model, tokenizer, PROMPTS, evaluating(4, 12), GREEDY, how=Plan(4, "dynamic", 0, merged=False))
    fast = generate(model, tokenizer, PROMPTS, evaluating(3, 12), GREEDY, how=Plan(3, "static", 64, merged=True))
    assert fast == plain and any(plain)
    compiled = [name for name, m in model.named_modules() if m._compiled_call_impl is not None]
    assert compiled and all(name.endswith(("mlp", "norm")) for name in compiled)
    assert all(torch.allclose(p, weights[name], atol=1e-6) for name, p in model.named_parameters())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert summed_loss(model, encoded, labels) == pytest.approx(loss, rel=1e-5)
    with model.disable_adapter():
        base = generate(model, tokenizer, PROMPTS, evaluating(4, 12), GREEDY, how=Plan(4, "dynamic", 0, merged=False))
    assert base != plain  # the adapter changes the answers: merging it changed nothing else


def test_the_stop_flag_is_read_a_step_late_on_cuda_only():
    """transformers' DeferredStopCheck (the host queues the next decode step before the last one ends) is on for
    CUDA inside the block, as transformers has it for mps, and its own gate is back after the block, error or
    not. If transformers turns it on for CUDA itself, the first assertion fails: the switch can go."""
    import torch
    from transformers.generation.utils import DeferredStopCheck

    from slothline.kinds._generative.generation import stop_read_a_step_late

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    supported = lambda device, assistant=False: DeferredStopCheck.is_supported(device, None, False, is_assistant=assistant)
    assert not supported(cuda)
    with stop_read_a_step_late(cuda):
        assert supported(cuda) and not supported(cuda, assistant=True) and not supported(cpu)
    assert not supported(cuda)
    with stop_read_a_step_late(cpu):
        assert not supported(cuda)
    with pytest.raises(ValueError), stop_read_a_step_late(cuda):
        raise ValueError
    assert not supported(cuda)


def test_generation_plan_follows_the_device_and_the_token_budget(tiny_qwen3):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from slothline.kinds._generative.generation import plan, rows_per_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    on_cpu = plan(model, [30] * 40, evaluating("auto", 12))
    assert (on_cpu.rows, on_cpu.cache, on_cpu.merged) == (16, "dynamic", False)  # the answers of every release
    assert plan(model, [30] * 40, evaluating(8, 12)).rows == 8
    assert plan(model, [30] * 3, evaluating("auto", 12)).rows == 3
    gpu = SimpleNamespace(device=SimpleNamespace(type="cuda"))
    budget = lambda tokens: evaluating("auto", 100).model_copy(update={"batch_tokens": tokens})
    assert rows_per_batch(gpu, budget(10_000), longest=400) == 25
    assert rows_per_batch(gpu, budget(10**9), longest=400) == 256
    assert rows_per_batch(gpu, budget(100), longest=400) == 1
    assert rows_per_batch(gpu, evaluating(32, 100), longest=400) == 32


def test_the_token_budget_counts_memory_torch_holds_unused_as_free(tiny_qwen3, monkeypatch):
    """After a pass, torch's allocator keeps its KV cache's memory: free to the next pass, not to the device."""
    import torch
    from transformers import AutoModelForCausalLM

    from slothline.kinds._generative.generation import kv_budget, kv_bytes_per_token

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (6 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 10 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 8 * 2**30)
    assert kv_budget(model) == 4 * 2**30 // kv_bytes_per_token(model)  # half of 6 GiB free and 2 cached


def test_the_static_cache_is_taken_where_its_compile_pays(tiny_qwen3, monkeypatch, capsys):
    """`evaluate.kv_cache: auto` compiles a static cache on a GPU only for passes of STATIC_CACHE_FROM_STEPS decode
    steps or more (batches x max_new_tokens); `static` takes it where the model compiles (the CPU included),
    `dynamic` never does, and a model transformers does not compile (quantized) stays dynamic, with a note where
    `static` asked for more."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from slothline.kinds._generative import generation
    from slothline.kinds._generative.generation import STATIC_CACHE_FROM_STEPS, choose_kv_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert [choose_kv_cache(model, setting, 10**6) for setting in ("auto", "static", "dynamic")] == \
        ["dynamic", "static", "dynamic"]
    gpu = lambda **inner: SimpleNamespace(**{"device": SimpleNamespace(type="cuda"), "hf_quantizer": None,
                                             "_can_compile_fullgraph": True, **inner})
    assert choose_kv_cache(gpu(), "auto", STATIC_CACHE_FROM_STEPS) == "static"
    assert choose_kv_cache(gpu(), "auto", STATIC_CACHE_FROM_STEPS - 1) == "dynamic"
    assert choose_kv_cache(gpu(), "static", 1) == "static" and choose_kv_cache(gpu(), "dynamic", 10**6) == "dynamic"
    capsys.readouterr()
    for setting in ("auto", "dynamic"):
        assert choose_kv_cache(gpu(_can_compile_fullgraph=False), setting, 10**6) == "dynamic"
        assert choose_kv_cache(gpu(hf_quantizer=object()), setting, 10**6) == "dynamic"
    assert capsys.readouterr().out == ""
    assert choose_kv_cache(gpu(hf_quantizer=object()), "static", 10**6) == "dynamic"
    assert ("evaluate.kv_cache: static: transformers does not compile this quantized SimpleNamespace, so it generates "
            "on the dynamic cache; set evaluate.kv_cache: auto") in capsys.readouterr().out

    asked = []
    monkeypatch.setattr(generation, "choose_kv_cache",
                        lambda model, setting, steps: asked.append((setting, steps)) or "dynamic")
    generation.plan(model, [30] * 40, evaluating(16, 12))  # 3 batches of 12 new tokens
    generation.plan(model, [30] * 40, evaluating(64, 12).model_copy(update={"kv_cache": "static"}))  # one batch of 40
    generation.plan(model, [], evaluating("auto", 12))
    assert asked == [("auto", 36), ("static", 12), ("auto", 0)]


@pytest.mark.parametrize("kind", ["causal_lm", "vision"])
def test_a_static_cache_of_4bit_weights_is_refused_before_training(kind):
    """The kind's own check (check_params runs it; on a CPU machine 4-bit is refused before it)."""
    from slothline import kinds
    from tests.conftest import load

    check = kinds.get(kind).check
    check(load(kind, model={"load_in_4bit": True}))
    check(load(kind, evaluate={"kv_cache": "static"}))
    with pytest.raises(SlothlineError, match="evaluate.kv_cache: static compiles the decode steps, which transformers "
                                             "does not do for 4-bit weights .* set evaluate.kv_cache: auto or dynamic, "
                                             "or model.load_in_4bit: false"):
        check(load(kind, model={"load_in_4bit": True}, evaluate={"kv_cache": "static"}))


def test_loss_batches_hold_their_logits_to_a_budget(tiny_qwen3):
    """The teacher-forced loss materialises every position's logits: a batch as large as generation's (up to
    256 rows on a GPU) of a 151,936-token vocabulary would not fit, so its rows follow the logits' size."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from slothline.kinds._generative.generation import LOSS_LOGITS, loss_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    vocab = model.config.vocab_size
    assert loss_rows(model, evaluating("auto", 12), longest=200) == 16  # the tiny default: generation's rows
    big = SimpleNamespace(device=SimpleNamespace(type="cuda"), config=SimpleNamespace(
        get_text_config=lambda decoder: SimpleNamespace(vocab_size=151_936)))
    budget = evaluating("auto", 100).model_copy(update={"batch_tokens": 10**9})
    assert loss_rows(big, budget, longest=1000) == LOSS_LOGITS // (1000 * 151_936) == 1
    assert loss_rows(big, budget, longest=100) == 17 and loss_rows(big, budget, longest=10**6) == 1
    assert vocab * 200 * 16 < LOSS_LOGITS


def test_base_runs_first_and_tuned_comes_first_in_the_results():
    from contextlib import contextmanager

    from slothline.kinds import with_base

    order = []

    @contextmanager
    def base():
        yield "base"

    results = with_base("tuned", base, lambda model: order.append(model) or model.upper())
    assert order == ["base", "tuned"] and list(results.items()) == [("tuned", "TUNED"), ("base", "BASE")]
