"""merge (adapter folded into the weights) and export (GGUF written with the gguf package, read back), and the
GGUF refusals that check_params makes before anything trains."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from slothline import kinds
from slothline.artifacts import EXPORT_DIR, EXPORT_METRICS, GGUF_FILE, MERGED_DIR, MODELFILE, TUNED_DIR, Manifest
from slothline.errors import SlothlineError
from tests.conftest import load, write_params

DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def adapter(workdir, tiny_qwen3, tokenizer):
    """A LoRA adapter with random (non-zero) B matrices, so merging really changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=DECODER_PROJECTIONS, init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(workdir.path / TUNED_DIR)
    tokenizer.save_pretrained(workdir.path / TUNED_DIR)
    Manifest(kind="causal_lm", method="lora", base_model="builtin:tiny-qwen3", revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=512).write(workdir.path / TUNED_DIR)
    return workdir


def merge(workdir, save_method: str = "merged_16bit", **sections):
    from stages import merge as merge_stage

    write_params(workdir.path, merge={"save_method": save_method}, **sections)
    merge_stage.main()
    return workdir.path / MERGED_DIR


def test_merged_model_matches_the_adapter_model(adapter, tiny_qwen3, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = merge(adapter)
    assert not (merged_dir / "adapter_config.json").exists()
    assert "<|im_start|>" in (merged_dir / "chat_template.jinja").read_text()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # plain transformers, no PEFT
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen3), adapter.path / TUNED_DIR)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    ids = torch.tensor([tokenizer("<|im_start|>user\nReverse the word apple.<|im_end|>\n")["input_ids"]])
    with torch.no_grad():
        expected, got, untuned = (m(ids).logits for m in (tuned, merged, base))
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    assert not torch.allclose(untuned, expected, atol=1e-2)  # the adapter does change the model
    assert Manifest.read(merged_dir).method == "full"


def test_the_merged_model_keeps_the_tokenizer_it_was_trained_with(adapter, tokenizer):
    """A model trained on alpaca rows is saved with the alpaca chat template (train): merge writes that tokenizer,
    not the base model's, and the GGUF export's Modelfile prompts with it."""
    import copy

    from slothline.kinds._generative.chat import adopt_alpaca_template, render

    trained = copy.deepcopy(tokenizer)
    adopt_alpaca_template(trained, [render([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                                           trained, "alpaca", False)])
    trained.save_pretrained(adapter.path / TUNED_DIR)
    merged_dir = merge(adapter)
    assert (merged_dir / "chat_template.jinja").read_text() == trained.chat_template
    export(adapter, ["f16"])
    assert "### Instruction:" in (adapter.path / EXPORT_DIR / "f16" / MODELFILE).read_text()


def test_lora_method_keeps_the_adapter(adapter):
    merged_dir = merge(adapter, "lora")
    assert (merged_dir / "adapter_config.json").is_file() and (merged_dir / "tokenizer.json").is_file()


def test_merged_4bit_on_cpu_is_a_clear_error(adapter):
    with pytest.raises(SlothlineError, match="merge.save_method: merged_4bit needs a CUDA GPU"):
        merge(adapter, "merged_4bit")


def export(workdir, quantizations: list[str]):
    from stages import export as export_stage

    write_params(workdir.path, export={"gguf_quantization": quantizations})
    export_stage.main()
    return json.loads((workdir.path / EXPORT_METRICS).read_text())


def test_gguf_files_are_written_and_read_back(adapter):
    import gguf

    merge(adapter)
    report = export(adapter, ["f16", "bf16", "q8_0"])
    assert set(report) == {"f16", "bf16", "q8_0"}
    sizes = {q: r["size_mb"] for q, r in report.items()}
    assert sizes["q8_0"] < sizes["f16"] == sizes["bf16"]
    for quantization, result in report.items():
        assert result["architecture"] == "qwen3" and result["vocab_size"] == 512
        folder = adapter.path / EXPORT_DIR / quantization
        reader = gguf.GGUFReader(str(folder / GGUF_FILE))
        assert len(reader.tensors) == result["tensors"] == 2 + 4 * 11  # embeddings, final norm, 11 per block
        template = reader.fields["tokenizer.chat_template"]
        assert "<|im_start|>" in bytes(template.parts[template.data[0]]).decode()
        assert len(reader.fields["tokenizer.ggml.merges"].data) > 0
        modelfile = (folder / MODELFILE).read_text()
        assert modelfile.startswith("FROM ./model.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    q8 = {t.name: t for t in gguf.GGUFReader(str(adapter.path / EXPORT_DIR / "q8_0" / GGUF_FILE)).tensors}
    assert q8["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert q8["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_a_merged_model_in_shards_exports_every_tensor_once(adapter, monkeypatch):
    """merge writes safetensors shards (5 GB each; 1 MB here), and export reads them all."""
    import gguf
    from safetensors import safe_open

    from slothline.backends import hf

    monkeypatch.setattr(hf, "SHARD_SIZE", "1MB")
    merged = merge(adapter)
    shards = sorted(merged.glob("model-*.safetensors"))
    assert len(shards) > 2 and (merged / "model.safetensors.index.json").is_file()
    names = [name for shard in shards for name in safe_open(shard, "pt").keys()]
    report = export(adapter, ["f16"])
    reader = gguf.GGUFReader(str(adapter.path / EXPORT_DIR / "f16" / GGUF_FILE))
    assert report["f16"]["tensors"] == len(reader.tensors) == len(set(names)) - ("lm_head.weight" in names)


def test_q8_0_values_round_trip(adapter):
    """Dequantised q8_0 weights equal the merged weights up to 8-bit rounding."""
    import gguf
    from safetensors.numpy import load_file

    merged = load_file(merge(adapter) / "model.safetensors")
    export(adapter, ["q8_0"])
    tensors = {t.name: t for t in gguf.GGUFReader(str(adapter.path / EXPORT_DIR / "q8_0" / GGUF_FILE)).tensors}
    tensor = tensors["blk.1.ffn_down.weight"]
    original = merged["model.layers.1.mlp.down_proj.weight"]
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(original.shape)
    assert abs(values - original).max() <= abs(original).max() / 127


def test_k_quants_without_llama_quantize_name_what_to_install(adapter, monkeypatch, tmp_path):
    """check_params refuses them first; export, which may run where check_params did not, refuses them too,
    before it writes anything."""
    merge(adapter)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(SlothlineError, match="q4_k_m need llama.cpp's quantizer: put `llama-quantize` on PATH"):
        export(adapter, ["q8_0", "q4_k_m"])
    assert not (adapter.path / EXPORT_DIR).exists()


def test_the_adapter_alone_exports_as_a_gguf_adapter_beside_its_base(adapter):
    """merge.save_method: lora: the export stage writes the base model's GGUF (from model.name) and the adapter's."""
    merge(adapter, "lora")
    report = export(adapter, ["f16"])
    folder = adapter.path / EXPORT_DIR / "f16"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "adapter.gguf", "base.gguf"]
    assert report["f16"]["adapter_size_mb"] > 0 and report["f16"]["architecture"] == "qwen3"
    assert report["f16"]["generation_check"] in ("16 of 16 greedy tokens match transformers",
                                                  "skipped: llama-cpp-python not installed")


def test_bf16_checkpoints_export(workdir, tiny_qwen3, tokenizer):
    """GPU merges are saved in bfloat16, which numpy cannot hold: they still convert."""
    from slothline.export.gguf import read_back, write_gguf
    from transformers import AutoModelForCausalLM

    model_dir = workdir.path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_gguf(model_dir, workdir.path / "bf16.gguf", "q8_0")
    assert read_back(workdir.path / "bf16.gguf", model_dir)["tensors"] == 46


def test_empty_formats_export_nothing(adapter):
    from stages import export as export_stage

    merge(adapter, "lora", export={"formats": []})
    export_stage.main()
    assert json.loads((adapter.path / EXPORT_METRICS).read_text()) == {}
    assert list((adapter.path / EXPORT_DIR).iterdir()) == []


def test_llama_family_exports_with_rotary_permutation(workdir, tokenizer):
    """A tiny Llama checkpoint converts too; q/k rows are permuted to llama.cpp's rotary layout."""
    import gguf
    from safetensors.numpy import load_file
    from slothline.export.gguf import permute_rotary, write_gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = workdir.path / "llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_gguf(model_dir, workdir.path / "llama.gguf", "f16")
    reader = gguf.GGUFReader(str(workdir.path / "llama.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    k_proj = load_file(model_dir / "model.safetensors")["model.layers.0.self_attn.k_proj.weight"]
    written = tensors["blk.0.attn_k.weight"].data.reshape(k_proj.shape)
    assert abs(written - permute_rotary(k_proj, 2).astype("float16")).max() == 0
    assert abs(written - k_proj.astype("float16")).max() > 0


def whole_model_gguf(model_dir: Path, out_file: Path, quantization: str) -> None:
    """The writer before streaming, as the reference: every tensor loaded, converted and held until the file
    is written (gguf's add_tensor and write_tensors_to_file)."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from slothline.export import gguf as streaming
    from slothline.export.gguf_vocab import write_vocab
    from slothline.families import family

    config = json.loads((model_dir / "config.json").read_text())
    recipe = family(config["model_type"]).gguf
    writer = gguf.GGUFWriter(str(out_file), recipe.arch)
    writer.add_name(model_dir.name)
    streaming.write_hyperparameters(writer, config, quantization, recipe)
    write_vocab(writer, AutoTokenizer.from_pretrained(model_dir), model_dir, config["vocab_size"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[recipe.arch.upper()], config["num_hidden_layers"])
    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    for hf_name, tensor in tensors.items():
        if config.get("tie_word_embeddings") and hf_name == "lm_head.weight":
            continue
        data = tensor.float().numpy() + (recipe.norm_shift if hf_name.endswith("norm.weight") else 0.0)
        if recipe.permute_rotary and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = streaming.permute_rotary(data, config["num_attention_heads" if "q_proj" in hf_name else
                                                          "num_key_value_heads"])
        kind = streaming.output_type(data.shape, quantization)
        writer.add_tensor(names.get_name(hf_name, try_suffixes=(".weight", ".bias")), streaming.encode_rows(data, kind),
                          raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("model_type", ["qwen3", "llama", "gemma3_text"])
@pytest.mark.parametrize("quantization", ["f16", "bf16", "q8_0"])
def test_the_streaming_writer_writes_the_whole_model_writers_bytes(workdir, tokenizer, monkeypatch, model_type,
                                                                   quantization):
    """Tensor by tensor, and a tensor a block of rows at a time (a tiny block here, so every tensor is cut),
    the file is byte for byte the one the whole-model writer writes, for both rotary layouts and shifted norms."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from slothline.export import gguf as streaming

    model_dir = workdir.path / model_type
    config = AutoConfig.for_model(model_type, vocab_size=512, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  tie_word_embeddings=model_type == "qwen3",
                                  **({"query_pre_attn_scalar": 16} if model_type == "gemma3_text" else {}))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    whole_model_gguf(model_dir, workdir.path / "whole.gguf", quantization)
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 1000)  # a few rows per block
    streaming.write_gguf(model_dir, workdir.path / "streamed.gguf", quantization)
    assert (workdir.path / "streamed.gguf").read_bytes() == (workdir.path / "whole.gguf").read_bytes()


PEAK_OF_EXPORT = """
import json, os, sys, threading, time
from pathlib import Path
from slothline.export.gguf import write_gguf
from tests.test_merge_export import whole_model_gguf
import gguf, safetensors.torch, torch, transformers
transformers.AutoTokenizer.from_pretrained(sys.argv[1])  # what loading imports is not the export's memory

def rss():  # all resident pages, and the anonymous ones (pages of mapped files, which the kernel can reclaim, not)
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/self/status")
              if line.startswith(("VmRSS:", "RssAnon:"))}
    return fields["VmRSS"], fields["RssAnon"]

writer = {"streaming": write_gguf, "whole": whole_model_gguf}[sys.argv[3]]
before, peak, done = rss(), [0, 0], threading.Event()
def watch():
    while not done.is_set():
        peak[:] = map(max, peak, rss())
        time.sleep(0.002)
watcher = threading.Thread(target=watch)
watcher.start()
writer(Path(sys.argv[1]), Path(sys.argv[2]), "f16")
done.set()
watcher.join()
peak[:] = map(max, peak, rss())
print(json.dumps({"grown": peak[0] - before[0], "anonymous_grown": peak[1] - before[1]}))
"""


def test_export_memory_stays_near_the_largest_tensor_not_the_model(tmp_path, tokenizer):
    """A 240 MB checkpoint exports with the process's own (anonymous) memory growing by a few times its largest
    tensor (8 MB here) plus a fixed 64 MB (a block of float32 rows, the allocator), where the whole-model writer
    (measured alike, as the control) holds more than the checkpoint; all its resident memory, pages of the
    memory-mapped checkpoint included, stays under half the checkpoint."""
    import subprocess
    import sys

    from safetensors import safe_open
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.conftest import ROOT

    model_dir = tmp_path / "model"
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    checkpoint = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        largest = max(2 * torch.Size(f.get_slice(name).get_shape()).numel() for name in f.keys())

    def grown(writer: str) -> dict:
        done = subprocess.run([sys.executable, "-c", PEAK_OF_EXPORT, str(model_dir), str(tmp_path / f"{writer}.gguf"),
                               writer], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.splitlines()[-1])

    streaming, whole = grown("streaming"), grown("whole")
    print({"checkpoint_mb": checkpoint / 2**20, "largest_tensor_mb": largest / 2**20,
           **{f"{writer}_{key}_mb": value / 2**20 for writer, run in [("streaming", streaming), ("whole", whole)]
              for key, value in run.items()}})
    # the control: the measurement sees a whole model
    assert checkpoint > 200 * 2**20 and whole["anonymous_grown"] > checkpoint
    # (measured: 32-50 MB anonymous against 320-340 MB, 37-60 MB in all against 570-590 MB)
    assert streaming["anonymous_grown"] < 64 * 2**20 + 4 * largest
    assert streaming["anonymous_grown"] < whole["anonymous_grown"] / 4 and streaming["grown"] < checkpoint / 2


@pytest.mark.llama_cpp
def test_llama_cpp_generates_what_transformers_generates(adapter):
    """llama.cpp loads each file, tokenizes the chat prompt like the tokenizer, and its first greedy
    tokens equal transformers' on the merged model."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    merge(adapter)
    report = export(adapter, ["f16", "q8_0"])
    assert report["f16"]["generation_check"] == "16 of 16 greedy tokens match transformers"
    assert report["q8_0"]["generation_check"] == "16 of 16 greedy tokens match transformers"


@pytest.mark.llama_cpp
def test_llama_cpp_runs_the_llama_family_export(workdir, tokenizer):
    """Without the rotary permutation llama.cpp would compute different attention and other tokens."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    from slothline.export.gguf import generation_check, text_reference, write_gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = workdir.path / "llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_gguf(model_dir, workdir.path / "llama.gguf", "f16")
    assert generation_check(workdir.path / "llama.gguf", text_reference(model_dir)) == (
        "16 of 16 greedy tokens match transformers")


@pytest.mark.parametrize("change, message", [
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
     "quantized \\(bitsandbytes\\) weights"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 256}}, "RoPE scaling"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     "config.json: transformers cannot read it .*Missing required keys in `rope_parameters`"),
    ({"model_type": "gemma3"}, "the GGUF writer supports qwen3, qwen2, llama, mistral, gemma3_text, phi3, qwen3_vl models, "
                               "not 'gemma3'"),
])
def test_export_refuses_what_it_would_write_wrongly(workdir, tiny_qwen3, tokenizer, change, message):
    from slothline.export.gguf import write_gguf
    from transformers import AutoModelForCausalLM

    model_dir = workdir.path / "merged"
    AutoModelForCausalLM.from_pretrained(tiny_qwen3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(SlothlineError, match=message):
        write_gguf(model_dir, workdir.path / "out.gguf", "f16")
    assert not (workdir.path / "out.gguf").exists()


# Refused at params time (check_params), before prepare and train run.

def model_directory(path, tiny_qwen3, model_type: str) -> str:
    """A local model directory: tiny-qwen3's config with `model_type`, and its tokenizer (byte-level BPE) and chat
    template."""
    path.mkdir()
    config = json.loads((Path(tiny_qwen3) / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(tiny_qwen3) / name).is_file():
            shutil.copy(Path(tiny_qwen3) / name, path / name)
    return str(path)


def check(**sections) -> None:
    kinds.check(kinds.get("causal_lm"), load(**sections))


def test_a_family_without_a_gguf_record_is_refused_at_params_time(tmp_path, monkeypatch, tiny_qwen3):
    monkeypatch.chdir(tmp_path)  # outside the project: a local model.name need not be a dependency here
    olmo = model_directory(tmp_path / "olmo", tiny_qwen3, "olmo2")
    with pytest.raises(SlothlineError, match=r"export.formats: gguf: the GGUF writer supports qwen3, qwen2, llama, "
                                             r"mistral, gemma3_text, phi3, qwen3_vl models, not 'olmo2'; set export.formats: \[\]"):
        check(model={"name": olmo})
    check(model={"name": olmo}, export={"formats": []})  # no GGUF asked for: nothing to refuse
    check(model={"name": model_directory(tmp_path / "qwen3", tiny_qwen3, "qwen3")})  # the same files as qwen3


def test_k_quants_without_llama_quantize_are_refused_at_params_time(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", str(tools))
    quantizations = {"export": {"gguf_quantization": ["q8_0", "q4_k_m"]}}
    with pytest.raises(SlothlineError, match=r"export.gguf_quantization: q4_k_m need llama.cpp's quantizer: put "
                                             r"`llama-quantize` on PATH .*or use f16, bf16, q8_0"):
        check(**quantizations)
    check(export={"gguf_quantization": ["f16", "q8_0"]})  # written in Python: nothing else needed
    (tools / "llama-quantize").write_text("#!/bin/sh\n")
    (tools / "llama-quantize").chmod(0o755)
    check(**quantizations)


@pytest.mark.parametrize("quantizations, message", [
    (["q8_0", "q3_x"], "export.gguf_quantization[1]: must be one of 'f16', 'bf16', 'q8_0', 'q4_k_m', 'q5_k_m', "
                       "'q6_k', 'q4_0' or 'q5_0' (got 'q3_x')"),
    (["q8_0", "q8_0"], "export.gguf_quantization: lists a quantization twice"),
])
def test_unknown_or_repeated_quantizations_are_refused_by_params_validation(tmp_path, quantizations, message):
    from slothline.params import load_params

    write_params(tmp_path, export={"gguf_quantization": quantizations})
    with pytest.raises(SlothlineError) as caught:
        load_params(tmp_path / "params.yaml")
    assert message in str(caught.value)
