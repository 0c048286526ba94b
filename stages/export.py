"""export: write the merged model in each of `export.formats`, and verify every file.

- gguf (causal LMs): one file per `export.gguf_quantization`, each with an Ollama Modelfile, read back
  (and generated from where llama-cpp-python is installed).
- onnx (classifiers): model.onnx with its tokenizer and config, whose onnxruntime logits on the test
  split must match transformers'.

Outs: models/export/<quantization>/{model.gguf,Modelfile}, models/export/onnx/ and metrics/export.json.
"""

import shutil
import subprocess
from pathlib import Path

from stages.lib import kinds
from stages.lib.artifacts import EXPORT_DIR, MERGED_DIR, Manifest, read_split
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.export import (LLAMA_CPP_QUANTIZATIONS, PYTHON_QUANTIZATIONS, generation_check, read_back,
                               write_gguf)
from stages.lib.outputs import atomic_dir, write_json
from stages.lib.params import load_params

METRICS_FILE = Path("metrics/export.json")


def main() -> None:
    params = load_params()
    settings = params.export
    manifest = Manifest.read(MERGED_DIR)
    task = kinds.get(manifest.kind)
    kinds.check_applicable(task, params)
    kinds.check_export_formats(task, settings.formats)
    if settings.formats and manifest.method == "lora":
        raise SlothlineError(f"{MERGED_DIR}: holds the adapter alone (merge.save_method: lora); "
                             f"{'/'.join(f.upper() for f in settings.formats)} export needs merge.save_method: "
                             "merged_16bit, or export.formats: []")
    report = {}
    with atomic_dir(EXPORT_DIR) as staging:
        if "gguf" in settings.formats:
            report.update(export_gguf(settings.gguf_quantization, staging))
        if "onnx" in settings.formats:
            report["onnx"] = export_onnx(staging / "onnx")
    write_json(METRICS_FILE, report)
    if not settings.formats:
        print("export.formats is empty: nothing to export")
    for name, result in report.items():
        if name == "onnx":
            print(f"{EXPORT_DIR}/onnx/model.onnx: {result['size_mb']} MB, logits within "
                  f"{result['max_abs_logit_diff']:.1e} of transformers on {result['rows_checked']} test rows")
        else:
            print(f"{EXPORT_DIR}/{name}/model.gguf: {result['size_mb']} MB, generation check: "
                  f"{result['generation_check']}")


def export_onnx(folder: Path) -> dict:
    """model.onnx (with tokenizer and config) in `folder`, checked with onnxruntime on the test split."""
    from stages.lib.onnx_export import check_onnx, write_onnx

    write_onnx(MERGED_DIR, folder)
    return check_onnx(folder / "model.onnx", MERGED_DIR, read_split("test"))


def export_gguf(quantizations: list[str], staging: Path) -> dict:
    """One GGUF file (and Modelfile) per quantization under `staging`; returns each file's checks."""
    unknown = [q for q in quantizations if q not in PYTHON_QUANTIZATIONS + LLAMA_CPP_QUANTIZATIONS]
    if unknown:
        raise SlothlineError(f"export.gguf_quantization: unknown {unknown}; choose from "
                             f"{', '.join(PYTHON_QUANTIZATIONS + LLAMA_CPP_QUANTIZATIONS)}")
    quantizer = shutil.which("llama-quantize")
    if any(q in LLAMA_CPP_QUANTIZATIONS for q in quantizations) and not quantizer:
        raise SlothlineError(
            f"export.gguf_quantization: {', '.join(q for q in quantizations if q in LLAMA_CPP_QUANTIZATIONS)} "
            "need llama.cpp's quantizer: put `llama-quantize` on PATH (build llama.cpp, or install its release), "
            f"or use {', '.join(PYTHON_QUANTIZATIONS)}, which need nothing else"
        )
    report = {}
    for quantization in quantizations:
        folder = staging / quantization
        folder.mkdir()
        gguf_file = folder / "model.gguf"
        if quantization in PYTHON_QUANTIZATIONS:
            write_gguf(MERGED_DIR, gguf_file, quantization)
        else:  # k-quants: an f16 file through llama.cpp's quantizer
            write_gguf(MERGED_DIR, folder / "f16.gguf", "f16")
            done = subprocess.run([quantizer, str(folder / "f16.gguf"), str(gguf_file), quantization.upper()],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SlothlineError(f"llama-quantize failed for {quantization}:\n{done.stderr[-2000:]}")
            (folder / "f16.gguf").unlink()
        (folder / "Modelfile").write_text(modelfile(MERGED_DIR))
        report[quantization] = {
            "size_mb": round(gguf_file.stat().st_size / 2**20, 3),
            **read_back(gguf_file, MERGED_DIR),
            "generation_check": generation_check(gguf_file, MERGED_DIR),
        }
    return report


OLLAMA_TEMPLATES = {  # a special token of the family: the chat template in Ollama's Go-template form
    "<|im_start|>": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    ),
    "<|start_header_id|>": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}


def modelfile(model_dir: Path) -> str:
    """An Ollama Modelfile: the GGUF beside it, the chat template, stop tokens and sampling defaults."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    template = next((t for marker, t in OLLAMA_TEMPLATES.items() if marker in vocab), None)
    if template is None:
        raise SlothlineError(f"export: no Ollama template for the chat format of {model_dir} (ChatML and Llama 3 known)")
    stops = sorted({tokenizer.eos_token, *(t for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if t in vocab)})
    lines = ["FROM ./model.gguf", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0.7", "PARAMETER top_p 0.8"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(main)
