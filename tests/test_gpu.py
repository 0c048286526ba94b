"""The Unsloth backend and the GPU-only options on a CUDA GPU (`pytest -m gpu`).

Stages run as `python stages/<name>.py` subprocesses, as `dvc repro` runs them, so that Unsloth's
patching of transformers in one stage never leaks into another; checks that compare models run in
a fresh process too.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from slothline.artifacts import (EVAL_METRICS, EXPORT_METRICS, MERGED_DIR, PARAMS_FILE, PREFERENCE_METRICS, THUMBNAILS_DIR,
                                 TRAIN_METRICS, TUNED_DIR)
from tests.conftest import ROOT, kind_defaults, merged, write_params

pytestmark = pytest.mark.gpu

PROMPT = "<|im_start|>user\nReverse the word apple.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def prepared(workdir):
    from stages import prepare

    sources = [{"path": str(ROOT / "data/raw" / name), "format": fmt}
               for name, fmt in [("alpaca.jsonl", "alpaca"), ("sharegpt.json", "sharegpt"),
                                 ("messages.jsonl", "messages"), ("reasoning.jsonl", "reasoning")]]
    workdir.write_params(sources, total=400, val_fraction=0.05, test_fraction=0.1)
    prepare.main()
    configure(workdir, train={"backend": "unsloth", "max_steps": 30, "learning_rate": 0.005},
              evaluate={"max_samples": 16, "max_new_tokens": 16})
    return workdir


def configure(workdir, **sections) -> None:
    """Merge `sections` into the work directory's params.yaml."""
    path = workdir.path / PARAMS_FILE
    path.write_text(yaml.safe_dump(merged(yaml.safe_load(path.read_text()), sections), sort_keys=False))


def python(workdir, *args: str) -> str:
    """Run python in the work directory with the project importable; fail the test with its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, *args], cwd=workdir.path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


METRICS = {"train": TRAIN_METRICS, "evaluate": EVAL_METRICS, "export": EXPORT_METRICS}


def stage(workdir, name: str) -> dict:
    """Run one stage; return its metrics file (or {} when it writes none)."""
    python(workdir, str(ROOT / "stages" / f"{name}.py"))
    metrics = workdir.path / METRICS[name] if name in METRICS else None
    return json.loads(metrics.read_text()) if metrics and metrics.is_file() else {}


COMPARE_LOGITS = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from slothline.models import resolve_model
merged_dir, prompt, tuned_dir = sys.argv[1], sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(merged_dir)
ids = tokenizer(prompt, return_tensors="pt").input_ids.cuda()
base = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-qwen3"), dtype=torch.float32, device_map={"": 0})
tuned = PeftModel.from_pretrained(base, tuned_dir)
merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, device_map={"": 0})
with torch.no_grad():
    expected, got = tuned(ids).logits.float(), merged(ids).logits.float()
    with tuned.disable_adapter():
        untuned = tuned(ids).logits.float()
quantized = getattr(merged.config, "quantization_config", None) is not None
if quantized:  # the same adapter on the 4-bit base, unmerged: what a 4-bit merge can at best reproduce
    from transformers import BitsAndBytesConfig
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    base4 = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-qwen3"), quantization_config=bnb,
                                                 device_map={"": 0})
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base4, tuned_dir)(ids).logits.float()
scale = expected.abs().max().item()
print(json.dumps({
    "quantized": quantized,
    "max_rel_diff": (got - expected).abs().max().item() / scale,
    "adapter_rel_change": (untuned - expected).abs().max().item() / scale,
    "argmax_agreement": (got.argmax(-1) == expected.argmax(-1)).float().mean().item(),
}))
"""


def compare_merged(workdir) -> dict:
    """The merged model (plain transformers) against base + adapter (PEFT) on one prompt: the float32
    base for a 16-bit merge, the 4-bit base for a 4-bit one."""
    result = json.loads(python(workdir, "-c", COMPARE_LOGITS, str(MERGED_DIR), PROMPT, str(TUNED_DIR)).splitlines()[-1])
    print(result)
    return result


def test_unsloth_labels_match_the_hf_backend_masks(prepared):
    """Unsloth's SFTTrainer turns the answer mask (the dataset's assistant_masks, as on hf) into labels on exactly
    the answers' tokens: it neither drops, cuts nor re-masks a row."""
    from slothline import backends, kinds
    from slothline.kinds._generative.chat import turn_markers
    from slothline.kinds.causal_lm import tokenized
    from slothline.params import load_params
    from slothline.runtime import probe, resolve

    params = load_params()
    runtime = resolve(params, probe())
    assert runtime.backend == "unsloth"
    backend = backends.get(runtime)
    task = kinds.get(params.kind)
    model, tokenizer = backends.load_for_training(task, runtime, params)
    rows = prepared.read_split("train")
    markers = turn_markers([r["text"] for r in rows])
    trainer = task.build_trainer(backend, runtime, params, model, tokenizer, rows, [], str(prepared.path / "out"), [])
    ours = tokenized(rows, tokenizer, markers)
    assert len(trainer.train_dataset) == len(ours)
    mismatched = sum(
        [t if m else -100 for t, m in zip(mine["input_ids"], mine["assistant_masks"])] != theirs["labels"]
        for mine, theirs in zip(ours, trainer.train_dataset)
    )
    assert mismatched == 0, f"{mismatched} of {len(rows)} rows are labelled differently"


def test_unsloth_train_evaluate_merge_export(prepared):
    """The whole chain on unsloth; merged_16bit through Unsloth's save_pretrained_merged, with the tokenizer saved
    beside the adapter (not the base model's)."""
    train = stage(prepared, "train")
    stage(prepared, "preference")  # method none: passes the SFT model on
    assert train["backend"] == "unsloth" and train["device"] != "cpu" and train["steps"] == 30
    assert (prepared.path / TUNED_DIR / "adapter_config.json").is_file()
    evaluation = stage(prepared, "evaluate")
    assert evaluation["tuned"]["loss"] < evaluation["base"]["loss"]
    template = prepared.path / TUNED_DIR / "chat_template.jinja"  # the tokenizer trained, told apart from the base's
    template.write_text(template.read_text() + "{# as trained #}")
    stage(prepared, "merge")
    assert (prepared.path / MERGED_DIR / "chat_template.jinja").read_text().endswith("{# as trained #}")
    comparison = compare_merged(prepared)
    assert not comparison["quantized"] and comparison["adapter_rel_change"] > 0.05
    # Unsloth merges into the base checkpoint's own (float32) weights; 0.02 leaves room for a bf16 base
    assert comparison["max_rel_diff"] < 0.02 and comparison["argmax_agreement"] >= 0.95
    configure(prepared, export={"gguf_quantization": ["f16", "q8_0"]})
    export = stage(prepared, "export")
    assert set(export) == {"f16", "q8_0"} and all(r["architecture"] == "qwen3" for r in export.values())


GENERATION_PATHS = """
import json
from slothline import backends, kinds
from slothline.artifacts import TUNED_DIR, Manifest, read_split
from slothline.kinds._generative.generation import Plan, generate, plan
from slothline.kinds._generative.tokens import encode
from slothline.params import load_params
from slothline.runtime import evaluation_runtime, probe
params = load_params()
manifest = Manifest.read(TUNED_DIR)
runtime = evaluation_runtime(manifest, probe())
task = kinds.get(manifest.kind)
model, tokenizer = backends.load_trained(task, manifest, runtime, TUNED_DIR)
rows = read_split("test")
prompts = [row["prompt"] for row in rows]
settings = params.evaluate.model_copy(update={"kv_cache": "static"})  # 40 short answers: auto would take dynamic
how = plan(model, [len(encode(tokenizer, p)) for p in prompts], settings)
plain = Plan(16, "dynamic", how.cache_length, merged=False)
answers = {}
with model.disable_adapter():
    answers["base"] = generate(model, tokenizer, prompts, settings, how=Plan(how.rows, how.cache, how.cache_length, False))
answers["tuned"] = generate(model, tokenizer, prompts, settings, how=how)
model.set_attn_implementation("sdpa")
with model.disable_adapter():
    answers["plain base"] = generate(model, tokenizer, prompts, settings, how=plain)
answers["plain tuned"] = generate(model, tokenizer, prompts, settings, how=plain)
same = lambda a, b: sum(x == y for x, y in zip(answers[a], answers[b])) / len(prompts)
right = lambda a: sum(x.strip() == row["reference"].strip() for x, row in zip(answers[a], rows))
print(json.dumps({"plan": how.describe(), "kv_cache": how.cache, "prompts": len(prompts),
                  "tuned_agreement": same("tuned", "plain tuned"), "base_agreement": same("base", "plain base"),
                  "tuned_differs_from_base": 1 - same("tuned", "base"),
                  "exactly_right": {name: right(name) for name in answers}}))
"""


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_evaluates_fast_path_answers_as_the_plain_path(prepared, backend):
    """On a GPU evaluate generates with the adapter merged, a compiled static cache and the grouped decode
    attention; its greedy answers agree with the plain path's (unmerged, dynamic cache, sdpa) on the tiny
    default trained on either backend. bf16 rounding flips near ties: the tuned model's answers must agree,
    the untrained random base's (whose logits are near ties throughout: on the CPU in bf16 the two paths
    agree on about half of its answers, in float32 on all) are reported, and both paths must score it the
    same against the references."""
    # trained until it answers (the fixture's 30 steps leave near ties in the tuned model too)
    configure(prepared, train={"backend": backend, "max_steps": 400}, evaluate={"max_samples": 40, "max_new_tokens": 24})
    stage(prepared, "train")
    stage(prepared, "preference")  # method none: passes the SFT model on
    result = json.loads(python(prepared, "-c", GENERATION_PATHS).splitlines()[-1])
    print(result)
    assert result["plan"]["adapter_merged"] and result["kv_cache"] == "static"
    assert result["tuned_agreement"] >= 0.9
    right = result["exactly_right"]
    assert right["plain tuned"] >= 10 and abs(right["tuned"] - right["plain tuned"]) <= 2
    assert right["base"] == right["plain base"]
    assert result["tuned_differs_from_base"] > 0.5


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_merged_4bit(prepared, backend):
    """merged_4bit writes bitsandbytes 4-bit weights that plain transformers loads (export refusing
    them is tested on CPU).

    Fidelity is not asserted: on the tiny random model 4-bit rounding alone moves the argmax of about
    half the tokens, and re-quantising W + BA after the merge moves more.
    """
    configure(prepared, train={"backend": backend, "max_steps": 10}, merge={"save_method": "merged_4bit"})
    stage(prepared, "train")
    stage(prepared, "preference")  # method none: passes the SFT model on
    stage(prepared, "merge")
    comparison = compare_merged(prepared)
    assert comparison["quantized"] and math.isfinite(comparison["max_rel_diff"])


def test_qlora_on_unsloth(prepared):
    """model.load_in_4bit: train on a 4-bit base, evaluate on it, merge into the 16-bit weights."""
    configure(prepared, model={"load_in_4bit": True})
    train = stage(prepared, "train")
    stage(prepared, "preference")  # method none: passes the SFT model on
    assert train["backend"] == "unsloth" and train["steps"] == 30
    evaluation = stage(prepared, "evaluate")
    assert evaluation["tuned"]["loss"] < evaluation["base"]["loss"]
    stage(prepared, "merge")
    comparison = compare_merged(prepared)
    # merged into the original 16-bit weights, not the 4-bit ones it trained against: close, not equal
    assert not comparison["quantized"] and comparison["argmax_agreement"] >= 0.8


def test_full_finetuning_on_unsloth(prepared):
    """Evaluated on the compiled static cache (which `auto` leaves to long evaluations): the base model loaded
    beside the tuned one, both passes compiled in one process."""
    configure(prepared, train={"full_finetuning": True, "max_steps": 10, "learning_rate": 1e-4},
              evaluate={"kv_cache": "static"})
    train = stage(prepared, "train")
    stage(prepared, "preference")  # method none: passes the SFT model on
    assert train["backend"] == "unsloth" and train["steps"] == 10
    tuned_dir = prepared.path / TUNED_DIR
    assert (tuned_dir / "config.json").is_file() and not (tuned_dir / "adapter_config.json").exists()
    evaluation = stage(prepared, "evaluate")
    assert evaluation["settings"]["kv_cache"] == "static" and not evaluation["settings"]["adapter_merged"]
    assert evaluation["tuned"]["loss"] < evaluation["base"]["loss"]


def test_preference_tuning_on_unsloth_after_sft(prepared):
    """SFT once, then DPO, ORPO and KTO each through Unsloth's patched TRL trainers on that SFT adapter (continued
    as Unsloth's own adapter loading does); evaluate scores the bundled pairs, whose rule SFT never teaches."""
    configure(prepared, preference={"sources": [{"path": str(ROOT / "data/raw/preference.jsonl"), "format": "preference"}]})
    stage(prepared, "prepare")
    stage(prepared, "train")
    results = {}
    for method in ("dpo", "orpo", "kto"):
        configure(prepared, preference={"method": method, "max_steps": 20, "learning_rate": 0.001})
        stage(prepared, "preference")
        metrics = json.loads((prepared.path / PREFERENCE_METRICS).read_text())
        assert metrics["backend"] == "unsloth" and metrics["steps"] == 20 and metrics["started_from"] == "sft", metrics
        assert json.loads((prepared.path / TUNED_DIR / "manifest.json").read_text())["preference"] == method
        evaluation = stage(prepared, "evaluate")
        results[method] = {name: {key: evaluation[name].get(key) for key in ("preference_pairs", "preference_accuracy")}
                           for name in ("base", "tuned")}
        print(method, results[method], flush=True)
    assert all(result["tuned"]["preference_pairs"] > 0 for result in results.values()), results
    assert results["dpo"]["tuned"]["preference_accuracy"] >= 0.8, results


RELOAD_LOFTQ = """
import json, torch
from pathlib import Path
from slothline import backends, kinds
from slothline.artifacts import Manifest
from slothline.params import load_params
from slothline.runtime import inference_runtime, probe, resolve
params = load_params()
runtime = resolve(params, probe())
backends.get(runtime)
task = kinds.get(params.kind)
model, tokenizer = backends.load_for_training(task, runtime, params)
ids = tokenizer(PROMPT, return_tensors="pt").input_ids.cuda()
model.save_pretrained("fresh-adapter")
manifest = Manifest(kind=task.NAME, method="lora", base_model=params.model.name, revision=None, backend=runtime.backend,
                    precision=runtime.precision, load_in_4bit=False, max_seq_length=params.model.max_seq_length)
with torch.no_grad():
    initial = model(ids).logits.float()
    with model.disable_adapter():
        quantized_base = model(ids).logits.float()
reloaded, _ = backends.load_trained(task, manifest, inference_runtime(manifest, probe()), Path("fresh-adapter"))
with torch.no_grad():
    again = reloaded(ids).logits.float()
scale = initial.abs().max().item()
print(json.dumps({"reload_rel_diff": (again - initial).abs().max().item() / scale,
                  "base_rel_change": (quantized_base - initial).abs().max().item() / scale}))
"""


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_loftq(prepared, backend):
    """LoftQ initialises LoRA against the quantised base; reloading the adapter rebuilds that same base."""
    configure(prepared, train={"backend": backend, "max_steps": 10}, lora={"loftq": True})
    result = json.loads(python(prepared, "-c", f"PROMPT = {PROMPT!r}\n" + RELOAD_LOFTQ).splitlines()[-1])
    print(result)
    assert result["base_rel_change"] > 1e-3  # the LoftQ adapter makes up for the quantisation error
    assert result["reload_rel_diff"] < max(1e-2, result["base_rel_change"] / 4)
    train = stage(prepared, "train")
    stage(prepared, "preference")  # method none: passes the SFT model on
    assert train["backend"] == backend and train["steps"] == 10
    evaluation = stage(prepared, "evaluate")
    assert evaluation["tuned"]["loss"] < evaluation["base"]["loss"]


PACKED_LOSSES = """
import dataclasses, json, sys
from slothline import backends, kinds, training
from slothline.artifacts import read_split
from slothline.backends import attention
from slothline.params import load_params
from slothline.runtime import probe, resolve
params = load_params()
runtime = dataclasses.replace(resolve(params, probe()), attention=sys.argv[1], padding_free=sys.argv[2] == "padding-free")
backend = backends.get(runtime)
task = kinds.get(params.kind)
model, tokenizer = backends.load_for_training(task, runtime, params)
calls = []
if runtime.backend == "unsloth" and runtime.attention == attention.VARLEN_FLASH:
    from unsloth.utils import attention_dispatch as dispatch
    varlen = dispatch._TORCH_VARLEN_ATTN
    assert varlen is not None, "Unsloth's torch-varlen branch is off"
    dispatch._TORCH_VARLEN_ATTN = lambda *args, **kwargs: calls.append(1) or varlen(*args, **kwargs)
elif runtime.attention == attention.VARLEN_FLASH:
    function = attention.varlen_sdpa_attention
    from transformers import AttentionInterface
    AttentionInterface.register(attention.VARLEN_ATTENTION, lambda *a, **k: calls.append(1) or function(*a, **k))
trainer = task.build_trainer(backend, runtime, params, model, tokenizer, read_split("train"), [], "out", [])
training.prepare_trainer(trainer, model, backend, runtime, params)  # as the train stage does
host_lengths = []  # batches whose row lengths reach the model on the host (backends.unsloth.prepare_trainer)
prepare_inputs = trainer._prepare_inputs
def counted(inputs):
    inputs = prepare_inputs(inputs)
    lengths = inputs.get("packed_seq_lengths")
    host_lengths.append(lengths is not None and lengths.device.type == "cpu")
    return inputs
trainer._prepare_inputs = counted
trainer.train()
unsloth_reads = None
if runtime.backend == "unsloth":
    import unsloth.models.qwen3 as family
    unsloth_reads = not getattr(family.get_packed_info_from_kwargs, "host_row_lengths", False)
print(json.dumps({"losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
                  "varlen_calls": len(calls), "padding_free": trainer.args.padding_free,
                  "batches": len(host_lengths), "host_length_batches": sum(host_lengths),
                  "unsloth_reads_lengths": unsloth_reads}))
"""


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_packed_rows_through_varlen_attention_train_like_the_dense_mask_path(prepared, backend):
    """Packed batches through torch's varlen FlashAttention (Unsloth's own branch, or the registered
    attention on hf) give the losses of the dense-mask SDPA path, step for step."""
    configure(prepared, train={"backend": backend, "packing": True, "max_steps": 10, "logging_steps": 1})
    varlen, dense = (json.loads(python(prepared, "-c", PACKED_LOSSES, path, "padding-free").splitlines()[-1])
                     for path in ("varlen-flash (cuDNN off)", "sdpa"))
    print({"varlen": varlen, "dense": dense})
    assert varlen["varlen_calls"] > 0 and dense["varlen_calls"] == 0
    assert len(varlen["losses"]) == len(dense["losses"]) == 10
    for a, b in zip(varlen["losses"], dense["losses"]):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (varlen["losses"], dense["losses"])


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_padding_free_unpacked_rows_train_like_padded_batches(prepared, backend):
    """The default on a GPU: each batch's rows concatenated (not packed: the same rows per step) through
    varlen attention, against the same batches padded: the same loss at each of 10 steps."""
    configure(prepared, train={"backend": backend, "max_steps": 10, "logging_steps": 1})
    joined, padded = (json.loads(python(prepared, "-c", PACKED_LOSSES, *how).splitlines()[-1])
                      for how in (("varlen-flash (cuDNN off)", "padding-free"), ("sdpa (cuDNN off)", "padded")))
    print({"padding_free": joined, "padded": padded})
    assert joined["padding_free"] and not padded["padding_free"]
    assert joined["varlen_calls"] > 0 and padded["varlen_calls"] == 0
    if backend == "unsloth":  # the row lengths reach Unsloth's attention from the host (prepare_trainer)
        assert joined["host_length_batches"] == joined["batches"] >= 10, joined
        assert joined["unsloth_reads_lengths"] is False, joined
    assert len(joined["losses"]) == len(padded["losses"]) == 10
    for a, b in zip(joined["losses"], padded["losses"]):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (joined["losses"], padded["losses"])


# --- vision (builtin:tiny-qwen3-vl on the bundled pictures) ---------------------------------------------

@pytest.fixture
def prepared_vision(workdir):
    """The vision default (conf/kind/vision.yaml) with the bundled sources by absolute path, on unsloth."""
    from stages import prepare

    sources = [{**source, "path": str(ROOT / source["path"])} for source in kind_defaults("vision")["data"]["sources"]]
    write_params(workdir.path, "vision", data={"sources": sources}, train={"backend": "unsloth", "epochs": 4},
                 evaluate={"max_samples": 40})
    prepare.main()
    return workdir


def test_unsloth_vision_labels_match_the_hf_collator(prepared_vision):
    """UnslothVisionDataCollator(train_on_responses_only) and our AnswerCollator give the same input ids and
    train on exactly the same tokens."""
    from slothline import backends, kinds
    from slothline.kinds._generative import AnswerCollator
    from slothline.kinds.vision import load_images, training_rows
    from slothline.params import load_params
    from slothline.runtime import probe, resolve

    params = load_params()
    runtime = resolve(params, probe())
    assert runtime.backend == "unsloth"
    backend = backends.get(runtime)
    task = kinds.get(params.kind)
    model, processor = backends.load_for_training(task, runtime, params)
    rows = prepared_vision.read_split("train")[:32]
    trainer = task.build_trainer(backend, runtime, params, model, processor, rows, [],
                                 str(prepared_vision.path / "out"), [])
    dataset = training_rows(rows)
    batch = [dataset[i] for i in range(len(rows))]
    theirs = trainer.data_collator(batch)
    ours = AnswerCollator(processor, ("<|im_start|>user\n", "<|im_start|>assistant\n"), load_images)(batch)
    assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()
    assert theirs["labels"].tolist() == ours["labels"].tolist()


def test_unsloth_vision_lora_targets_match_the_hf_backend(prepared_vision):
    """Unsloth's get_peft_model, given our regex and the finetune flags, adapts the modules PEFT adapts on hf."""
    configure(prepared_vision, lora={"finetune_vision_layers": False})
    script = """
import json
from slothline import backends, kinds
from slothline.params import load_params
from slothline.runtime import probe, resolve
params = load_params()
runtime = resolve(params, probe())
backends.get(runtime)
task = kinds.get(params.kind)
model, _ = backends.load_for_training(task, runtime, params)
tower = lambda name: name[min(name.find(t) for t in ("language_model.", "visual.") if t in name):]
print(json.dumps(sorted(tower(n) for n, m in model.named_modules() if hasattr(m, "lora_A"))))
"""
    adapted = {}
    for backend in ("unsloth", "hf"):
        configure(prepared_vision, train={"backend": backend})
        adapted[backend] = json.loads(python(prepared_vision, "-c", script).splitlines()[-1])
    assert adapted["unsloth"] == adapted["hf"] and adapted["hf"]
    assert not any("visual" in name for name in adapted["hf"])


def test_unsloth_vision_train_evaluate_merge(prepared_vision):
    """The vision chain on unsloth: it learns (its answers generated on the compiled static cache, pictures in the
    prefill), and the merged model loads with plain transformers."""
    configure(prepared_vision, evaluate={"kv_cache": "static"})
    train = stage(prepared_vision, "train")
    stage(prepared_vision, "preference")  # method none: passes the SFT model on
    assert train["kind"] == "vision" and train["backend"] == "unsloth" and train["device"] != "cpu"
    evaluation = stage(prepared_vision, "evaluate")
    print(evaluation)
    assert evaluation["settings"]["kv_cache"] == "static" and evaluation["settings"]["adapter_merged"]
    assert evaluation["tuned"]["loss"] < evaluation["base"]["loss"]
    assert evaluation["tuned"]["exact_match"] > evaluation["base"]["exact_match"] + 20
    assert (prepared_vision.path / THUMBNAILS_DIR).is_dir()
    stage(prepared_vision, "merge")
    check = """
from transformers import AutoModelForImageTextToText, AutoProcessor
from PIL import Image
model = AutoModelForImageTextToText.from_pretrained(MERGED_DIR, device_map={"": 0})
processor = AutoProcessor.from_pretrained(MERGED_DIR)
chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
inputs = processor(text=[processor.apply_chat_template(chat, add_generation_prompt=True)],
                   images=[Image.new("RGB", (64, 64), "white")], return_tensors="pt").to(0)
print(processor.batch_decode(model.generate(**inputs, max_new_tokens=8)[:, inputs["input_ids"].shape[1]:]))
"""
    print(python(prepared_vision, "-c", f"MERGED_DIR = {str(MERGED_DIR)!r}\n" + check))
    assert stage(prepared_vision, "export") == {}  # vision models offer no export format: models/merged is it


@pytest.mark.parametrize("head_dim, heads, kv_heads", [(128, 32, 8), (64, 8, 8), (80, 12, 4), (256, 8, 4)])
def test_compiled_decode_steps_attend_through_flex_attention_as_sdpa_on_cuda(head_dim, heads, kv_heads):
    """On CUDA, compiled decode steps run inductor's FlexAttention kernels (decoding where the query heads per
    key/value head are a power of two, its general kernel where not: 12 for 4) for head sizes of Qwen3 and
    Llama (128), small models (64), Phi-2 (80) and Gemma (256), and give sdpa's greedy tokens and, in float32,
    its logits."""
    import torch

    from tests.conftest import compiled_decode_against_sdpa

    used, (flex_sequences, flex), (sequences, reference) = compiled_decode_against_sdpa(
        head_dim=head_dim, heads=heads, kv_heads=kv_heads, device="cuda", dtype=torch.float32)
    assert used
    assert torch.equal(flex_sequences, sequences)
    assert torch.allclose(flex, reference, atol=1e-4), (flex - reference).abs().max()
