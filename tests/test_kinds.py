"""The kinds and backends as the design promises them: every registered kind implements the whole Task
protocol and has its defaults in conf/, Unsloth is imported before transformers in every stage that picks a
backend, and check_params refuses, before prepare runs, what a later stage would."""

import ast
import re
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slothline import kinds
from slothline.artifacts import MANIFEST_FILE
from slothline.conf import compose
from slothline.errors import SlothlineError
from slothline.kinds import Task
from slothline.params import Params
from tests.conftest import ROOT, load, write_params

FUNCTIONS = [name for name, value in vars(Task).items() if inspect.isfunction(value) and not name.startswith("_")]
CONSTANTS = list(Task.__annotations__)


def test_the_kinds_are_the_packages_under_kinds():
    assert kinds.names() == ["causal_lm", "classifier", "vision"]
    with pytest.raises(SlothlineError, match="kind: 'audio' is not a model kind; use one of causal_lm, classifier, vision"):
        kinds.get("audio")


@pytest.mark.parametrize("name", kinds.names())
def test_every_kind_implements_the_whole_protocol(name):
    task = kinds.get(name)
    missing = [attr for attr in FUNCTIONS + CONSTANTS if not hasattr(task, attr)]
    assert not missing, f"{name} lacks {missing}"
    for function in FUNCTIONS:  # called positionally by the stages: the same number of arguments
        expected = len(inspect.signature(getattr(Task, function)).parameters) - 1  # self
        assert len(inspect.signature(getattr(task, function)).parameters) == expected, (name, function)
    assert task.NAME == name and issubclass(task.Params, Params)
    assert task.Params.model_fields["kind"].default == name
    assert all(isinstance(getattr(task, attr), tuple) for attr in ("FORMATS", "EXPORT_FORMATS", "VAL_METRICS"))
    assert set(task.Params.model_fields) == set(Params.model_fields)  # kinds extend the stage sections, add none


@pytest.mark.parametrize("name", kinds.names())
def test_every_kind_has_defaults_in_conf_that_its_params_accept(name):
    composed = compose(name, conf_dir=ROOT / "conf")
    assert composed["kind"] == name
    params = kinds.get(name).Params.model_validate(composed)
    kinds.check(kinds.get(name), params)


def test_the_committed_params_yaml_is_the_text_default_as_conf_composes_it():
    import yaml

    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == compose("causal_lm", conf_dir=ROOT / "conf")


def test_only_the_unsloth_backend_imports_unsloth_and_first():
    importers = []
    for file in (ROOT / "slothline").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "unsloth" for name in names):
                importers.append(file.relative_to(ROOT).as_posix())
    assert set(importers) == {"slothline/backends/unsloth.py"}
    first = next(node for node in ast.parse((ROOT / "slothline/backends/unsloth.py").read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.Import) and first.names[0].name == "unsloth"


def test_no_library_module_imports_transformers_trl_or_peft_when_imported():
    """Only the backends' functions do, after `backends.get` has imported Unsloth where it is used."""
    modules = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for path in (ROOT / "slothline").rglob("*.py") if path.name != "unsloth.py")
    stage_modules = [f"stages.{path.stem}" for path in (ROOT / "stages").glob("*.py")]
    code = (f"import importlib, sys\nfor m in {modules + stage_modules!r}: importlib.import_module(m)\n"
            "print([m for m in ('transformers', 'trl', 'peft', 'unsloth') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


FAKE_UNSLOTH = """import json, sys
print(json.dumps(sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules)))
raise SystemExit(0)
"""
FAKE_GPU = """import runpy, sys
sys.path.insert(0, {fake!r})
from slothline import runtime
runtime.probe = lambda: runtime.Capabilities(cuda=True, device_name="GPU", bf16=True, unsloth=True,
                                             bitsandbytes=True, gpu_count=1)
runpy.run_module({stage!r}, run_name="__main__")
"""


def unsloth_trained_project(workdir) -> None:
    """Params, prepared splits and a manifest of a LoRA adapter trained on the unsloth backend."""
    write_params(workdir.path)
    prepared = workdir.path / "data/prepared"
    prepared.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (prepared / f"{split}.jsonl").write_text(json.dumps({"id": "a", "prompt": "p", "text": "t"}) + "\n")
    tuned = workdir.path / "models/tuned"
    tuned.mkdir(parents=True)
    (tuned / MANIFEST_FILE).write_text(json.dumps({
        "kind": "causal_lm", "method": "lora", "base_model": "builtin:tiny-qwen3", "revision": None,
        "backend": "unsloth", "precision": "bfloat16", "load_in_4bit": False, "max_seq_length": 512}))


@pytest.mark.parametrize("stage", ["train", "merge"])
def test_stages_import_unsloth_before_transformers(stage, workdir, tmp_path_factory):
    """On a (pretended) CUDA machine with Unsloth, each stage that trains or merges on unsloth imports it before
    transformers, TRL or PEFT: the stand-in unsloth module reports what was imported before it."""
    fake = tmp_path_factory.mktemp("fake")
    (fake / "unsloth.py").write_text(FAKE_UNSLOTH)
    unsloth_trained_project(workdir)
    done = subprocess.run([sys.executable, "-c", FAKE_GPU.format(fake=str(fake), stage=f"stages.{stage}")],
                          cwd=workdir.path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


STOP_AT_LOAD = """
from slothline import backends
def stop(task, manifest, runtime, directory):
    print(json.dumps({"backend": runtime.backend, "unsloth_imported": "unsloth" in sys.modules}))
    raise SystemExit(0)
backends.load_trained = stop
"""


def test_evaluate_generates_on_transformers_whichever_backend_trained(workdir, tmp_path_factory):
    """An adapter trained on unsloth is evaluated through transformers (its compiled static cache): the stage
    never imports Unsloth, whose patches would reach transformers' model classes and compile settings."""
    fake = tmp_path_factory.mktemp("fake")
    (fake / "unsloth.py").write_text(FAKE_UNSLOTH)
    unsloth_trained_project(workdir)
    script = FAKE_GPU.format(fake=str(fake), stage="stages.evaluate").replace(
        "runpy.run_module", "import json\n" + STOP_AT_LOAD + "runpy.run_module")
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir.path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"backend": "hf", "unsloth_imported": False}


def check_params_error(directory: Path, kind: str = "causal_lm", **sections) -> str:
    """The error check_params stops with for these params (the first stage: nothing was prepared or trained)."""
    from stages import check_params

    write_params(directory, kind, **sections)
    with pytest.raises(SlothlineError) as failed:
        check_params.main()
    assert not (directory / "data/prepared").exists()
    return str(failed.value)


@pytest.mark.parametrize("kind, sections, message", [
    ("causal_lm", {"export": {"gguf_quantization": ["q3_weird"]}}, r"export.gguf_quantization\[0\]: must be one of"),
    ("causal_lm", {"lora": {"finetune_vision_layers": False}},
     "lora.finetune_vision_layers: unknown parameter for causal_lm models"),
    ("vision", {"train": {"packing": True}}, "train.packing: unknown parameter for vision models"),
    ("classifier", {"evaluate": {"temperature": 0.7}}, "evaluate.temperature: unknown parameter for classifier models"),
    ("causal_lm", {"data": {"labels": ["a", "b"]}}, "data.labels: unknown parameter for causal_lm models"),
    ("classifier", {"train": {"metric_for_best_model": "rougeL", "load_best_model_at_end": True}},
     "train.metric_for_best_model: classifier models are measured on the val split by accuracy, loss, macro_f1, "
     "micro_f1, not rougeL"),
    ("causal_lm", {"train": {"early_stopping_patience": 2}, "data": {"val_fraction": 0.0}},
     "judge the model on the val split, which data.val_fraction: 0 leaves empty"),
    ("vision", {"export": {"formats": ["onnx"]}}, "export.formats: onnx is not offered for vision models; use gguf"),
    ("vision", {"export": {"formats": ["gguf"]}, "merge": {"save_method": "lora"}},
     "export.formats: gguf of a vision model needs merge.save_method: merged_16bit"),
    ("classifier", {"merge": {"save_method": "lora"}}, "merge.save_method: lora writes the adapter alone"),
    ("causal_lm", {"merge": {"save_method": "lora"}, "lora": {"bias": "all"}},
     "export.formats: gguf with merge.save_method: lora: a GGUF adapter holds plain LoRA on linear layers, and this "
     "one has biases trained"),
    ("causal_lm", {"data": {"test_fraction": 0.0}}, "data.test_fraction: 0 leaves no test split"),
    ("classifier", {"model": {"name": "builtin:tiny-qwen3"}},
     r"kind: classifier, but builtin:tiny-qwen3's config is that of a causal_lm model; switch with `dvc exp run -S "
     r"kind=causal_lm`"),
    ("vision", {"data": {"sources": [{"path": "data/raw/alpaca.jsonl", "format": "alpaca"}]}},
     "data.sources\\[0\\].format: alpaca is not a format of vision models; use one of messages, vqa, sharegpt_vision"),
    ("causal_lm", {"model": {"max_seq_length": 100000}},
     "model.max_seq_length: 100000 is above the 2048 positions builtin:tiny-qwen3 has .*set it to at most 2048"),
    ("classifier", {"model": {"max_seq_length": 4096}}, "above the 512 positions builtin:tiny-modernbert has"),
    ("causal_lm", {"train": {"lr_scheduler": "cosine_warm"}},
     "train.lr_scheduler: 'cosine_warm' is not a name transformers knows; did you mean cosine?"),
    ("causal_lm", {"train": {"lr_scheduler": "cosine_with_min_lr"}},
     "train.lr_scheduler: cosine_with_min_lr cannot be built from train.lr_scheduler_kwargs {} \\(One of min_lr or "
     "min_lr_rate should be set"),
    ("vision", {"train": {"lr_scheduler": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_stable_steps": 3}}},
     "warmup_stable_decay cannot be built from train.lr_scheduler_kwargs {'num_stable_steps': 3} .*num_decay_steps"),
    ("causal_lm", {"train": {"optim": "adamw_torhc"}}, "train.optim: 'adamw_torhc' is not a name transformers knows; "
                                                       "did you mean adamw_torch?"),
    ("causal_lm", {"lora": {"target_modules": ["q_proj", "dwon_proj"]}},
     "lora.target_modules: dwon_proj matched no layer of this model; its linear layers are: down_proj, gate_proj"),
    ("causal_lm", {"lora": {"target_modules": ["all-linear"]}},
     "all-linear matched no layer .*; or set lora.target_modules: null for the family's default \\(q_proj, k_proj"),
    ("causal_lm", {"lora": {"target_modules": "all-linear"}},
     "lora.target_modules: .*a list of layer names, like \\[q_proj, v_proj\\], or null .*got the string 'all-linear'"),
    ("causal_lm", {"lora": {"target_modules": ["q_proj", "lm_head"]}},
     "lora.target_modules: lm_head is the model's embeddings or output layer, which LoRA here does not train"),
    ("causal_lm", {"lora": {"target_modules": ["embed_tokens", "v_proj"]}},
     "lora.target_modules: embed_tokens is the model's embeddings or output layer"),
    ("classifier", {"train": {"full_finetuning": True}, "merge": {"save_method": "lora"}},
     "merge.save_method: lora keeps the LoRA adapter, but train.full_finetuning trains the whole model"),
    ("classifier", {"lora": {"target_modules": ["q_proj"]}}, "lora.target_modules: q_proj matched no layer"),
    ("causal_lm", {"model": {"load_in_4bit": True}}, "model.load_in_4bit: 4-bit QLoRA needs a CUDA GPU"),
    ("causal_lm", {"train": {"backend": "unsloth"}}, "train.backend: unsloth needs a CUDA GPU"),
    ("causal_lm", {"train": {"optim": "adamw_8bit"}}, "train.optim: adamw_8bit runs through bitsandbytes and needs a "
                                                      "CUDA GPU"),
    ("causal_lm", {"train": {"num_gpus": 2}}, "train.num_gpus: 2, but this machine has no CUDA GPU"),
    ("vision", {"merge": {"save_method": "merged_4bit"}}, "merge.save_method: merged_4bit needs a CUDA GPU"),
    ("causal_lm", {"export": {"gguf_quantization": ["q8_0", "Q8_0"]}}, "lists a quantization twice"),
    ("causal_lm", {"data": {"sources": [{"path": "data/raw/alpaca.jsonl", "format": "alpaca", "template": "alpaca"},
                                        {"path": "data/raw/sharegpt.json", "format": "sharegpt"}]}},
     "data.sources: chat and alpaca templates mixed, but train.train_on_responses_only masks every row"),
    ("causal_lm", {"data": {"system_prompt": "Be brief.",
                            "sources": [{"path": "data/raw/alpaca.jsonl", "format": "alpaca", "template": "alpaca"}]}},
     r"data.system_prompt: the alpaca template has no place for a system prompt \(data.sources\[0\] use"),
    ("causal_lm", {"data": {"test_sources": [{"path": "data/raw/alpaca.jsonl", "format": "alpaca", "template": "alpaca",
                                              "name": "held_out"}]}},
     "data.test_sources: template alpaca, which no source of data.sources uses"),
])
def test_check_params_refuses_before_prepare_what_a_later_stage_would(workdir, kind, sections, message):
    assert re.search(message, check_params_error(workdir.path, kind, **sections))


def test_response_only_training_on_a_chat_template_of_no_known_format_is_refused(workdir, tiny_qwen3):
    """Answers are found by a known chat format's turn markers: a template of another form is refused before
    prepare, naming both ways on; without response-only training the same model is fine."""
    model = shutil.copytree(tiny_qwen3, workdir.path / "plain")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    error = check_params_error(workdir.path, model={"name": str(model)}, export={"formats": []})
    assert re.search(r"train.train_on_responses_only: .*plain's chat template writes turns of no known format \(known: "
                     r"chatml, llama-3, gemma, phi-3, mistral, alpaca\).*set train.train_on_responses_only: false", error)
    from stages import check_params

    write_params(workdir.path, model={"name": str(model)}, export={"formats": []},
                 train={"train_on_responses_only": False})
    check_params.main()


def test_check_params_refuses_gguf_of_a_family_the_writer_does_not_write(workdir, tiny_qwen3):
    """An OLMo 2 model trains and merges, but its GGUF cannot be written: refused before training."""
    model = workdir.path / "olmo"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"]}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # its tokenizer is Qwen's
        if (Path(tiny_qwen3) / name).is_file():
            shutil.copy(Path(tiny_qwen3) / name, model / name)
    error = check_params_error(workdir.path, model={"name": str(model)})
    assert ("export.formats: gguf: the GGUF writer supports qwen3, qwen2, llama, mistral, gemma3_text, phi3, qwen3_vl models, "
            "not 'olmo2'") in error
    write_params(workdir.path, model={"name": str(model)}, export={"formats": []})
    from stages import check_params

    check_params.main()  # without GGUF export the same model is fine


def test_check_params_names_hand_edits_that_the_next_experiment_would_drop(workdir, capsys, monkeypatch):
    from stages import check_params

    shutil.copytree(ROOT / "conf", workdir.path / "conf")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    write_params(workdir.path)
    check_params.main()
    assert "note:" not in capsys.readouterr().out
    write_params(workdir.path, lora={"r": 64}, train={"epochs": 2})
    check_params.main()
    out = capsys.readouterr().out
    assert "params.yaml differs from what conf/ composes for causal_lm at lora.r, train.epochs" in out
    assert "keep them in conf/config.yaml or conf/kind/causal_lm.yaml" in out
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # inside `dvc exp run`, the differences are its -S overrides
    check_params.main()
    assert "note:" not in capsys.readouterr().out


def test_quantization_names_are_read_in_either_case(workdir):
    """llama.cpp spells them upper case (Q8_0, Q4_K_M): both are the same quantization."""
    assert load(export={"gguf_quantization": ["Q8_0", "F16"]}).export.gguf_quantization == ["q8_0", "f16"]


def test_valid_params_of_every_kind_pass_check_params(workdir):
    from stages import check_params

    for name in kinds.names():
        write_params(workdir.path, name)
        check_params.main()
    assert load("vision").kind == "vision"
