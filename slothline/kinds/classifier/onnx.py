"""ONNX export of merged sequence classifiers with torch's exporter (torch.export), verified with
onnxruntime: on every test row its logits must equal transformers' within ONNX_TOLERANCE.

The written model.onnx is the same bytes on every run of the same model, so the stages after export do not
rerun: the graph is traced in a process whose string hashing is fixed (models' code iterates sets of
strings, such as ModernBERT's `set(config.layer_types)`, whose order otherwise changes from process to
process and with it the order and names of the traced nodes), and the exporter's debug records (stack
traces with absolute file paths, FX node names) are removed."""

import os
import re
import subprocess
import sys
from pathlib import Path

from slothline.errors import SlothlineError, run_stage
from slothline.kinds import context_length
from slothline.kinds.classifier import batch, encode, forward_inputs

ONNX_TOLERANCE = 1e-4  # largest absolute logit difference accepted
EXAMPLE = [{"text": "An example."}, {"text": "A longer example, so that the batch is padded."}]


def load(model_dir: Path):
    """The merged model in float32, without a KV cache among a decoder's outputs (torch.export cannot return one),
    and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def write_onnx(model_dir: Path, out_dir: Path) -> None:
    """`out_dir`/model.onnx (float32; batch and sequence length dynamic; the tokenizer's inputs that the model's
    forward takes in, `logits` out) with the tokenizer and config (id2label) beside it; the same bytes on every run
    (see the module's doc), written by a child process unless this one's hashing is already fixed (PYTHONHASHSEED=0)."""
    if sys.flags.hash_randomization:
        return in_fixed_hash_process(model_dir, out_dir)
    import torch

    model, tokenizer = load(model_dir)
    example = forward_inputs(model, batch(tokenizer, encode(tokenizer, EXAMPLE, None)))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    out_dir.mkdir(parents=True)
    try:
        torch.onnx.export(model, args=(), kwargs=example, f=out_dir / "model.onnx", input_names=list(example),
                          output_names=["logits"], dynamic_shapes={name: dims for name in example}, dynamo=True,
                          external_data=False, verbose=False)
    except Exception as err:  # the exporter raises many types; all mean "this model does not export"
        raise SlothlineError(f"export.formats: onnx: torch's exporter failed on {model_dir} "
                             f"({err.__class__.__name__}: {str(err)[:500]})") from None
    without_debug_records(out_dir / "model.onnx")
    tokenizer.save_pretrained(out_dir)
    model.config.save_pretrained(out_dir)


def in_fixed_hash_process(model_dir: Path, out_dir: Path) -> None:
    """write_onnx in a child Python whose PYTHONHASHSEED is 0; its refusal is raised here as it was there."""
    import slothline

    package_root = str(Path(slothline.__file__).resolve().parents[1])  # this process's slothline, not another
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", __name__, str(model_dir), str(out_dir)], env=env,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode == 0:
        sys.stderr.write(result.stderr)
        return
    refusal = re.search(r"(?:^|\n)error: (.*)\Z", result.stderr, re.S)
    raise SlothlineError(refusal.group(1).strip() if refusal else
                         f"export.formats: onnx: the export process failed (exit status {result.returncode}): "
                         f"{result.stderr.strip()[-1500:]}")


def without_debug_records(onnx_file: Path) -> None:
    """Rewrite `onnx_file` without what the exporter records for debugging and the model does not run on: the
    metadata of graphs, nodes and values (stack traces, FX nodes, module names) and doc strings."""
    import onnx

    model = onnx.load(str(onnx_file))

    def clean(graph) -> None:
        graph.doc_string = ""
        del graph.metadata_props[:]
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            del value.metadata_props[:]
        for node in graph.node:
            clean_node(node)

    def clean_node(node) -> None:
        node.doc_string = ""
        del node.metadata_props[:]
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                clean(subgraph)

    model.doc_string = ""
    clean(model.graph)
    for function in model.functions:
        function.doc_string = ""
        del function.metadata_props[:]
        for node in function.node:
            clean_node(node)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_file))


def check_onnx(onnx_file: Path, model_dir: Path, rows: list[dict], batch_size: int = 16) -> dict:
    """The ONNX model's logits against transformers' on `rows`, in batches; fails beyond ONNX_TOLERANCE."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    model, tokenizer = load(model_dir)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    context = context_length(model.config, tokenizer)
    largest, agree = 0.0, 0
    for start in range(0, len(rows), batch_size):
        inputs = forward_inputs(model, batch(tokenizer, encode(tokenizer, rows[start : start + batch_size], context)))
        with torch.inference_mode():
            expected = model(**inputs).logits.numpy()
        got = session.run(["logits"], {name: inputs[name].numpy() for name in wanted})[0]
        largest = max(largest, float(np.abs(got - expected).max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
    if largest > ONNX_TOLERANCE:
        raise SlothlineError(f"{onnx_file}: failed verification: logits differ from transformers' by up to "
                             f"{largest:.2e} (tolerance {ONNX_TOLERANCE:g}) on the test split")
    return {
        "size_mb": round(onnx_file.stat().st_size / 2**20, 3),
        "opset": next(o.version for o in onnx.load(str(onnx_file)).opset_import if o.domain in ("", "ai.onnx")),
        "rows_checked": len(rows),
        "max_abs_logit_diff": float(f"{largest:.3g}"),
        "tolerance": ONNX_TOLERANCE,
        "same_class_rows": agree,
    }


if __name__ == "__main__":  # in_fixed_hash_process's child: python -m slothline.kinds.classifier.onnx MODEL_DIR OUT_DIR
    run_stage(lambda: write_onnx(Path(sys.argv[1]), Path(sys.argv[2])))
