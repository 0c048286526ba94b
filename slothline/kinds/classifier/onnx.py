"""ONNX export of merged sequence classifiers with torch's exporter (torch.export), verified with
onnxruntime: on every test row its logits must equal transformers' within ONNX_TOLERANCE."""

from pathlib import Path

from slothline.errors import SlothlineError
from slothline.kinds.classifier import batch, encode

ONNX_TOLERANCE = 1e-4  # largest absolute logit difference accepted
EXAMPLE = [{"text": "An example."}, {"text": "A longer example, so that the batch is padded."}]


def load(model_dir: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def write_onnx(model_dir: Path, out_dir: Path) -> None:
    """`out_dir`/model.onnx (float32; batch and sequence length dynamic; the tokenizer's inputs in, `logits`
    out) with the tokenizer and config (id2label) beside it."""
    import torch

    model, tokenizer = load(model_dir)
    example = dict(batch(tokenizer, encode(tokenizer, EXAMPLE, None)))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    out_dir.mkdir(parents=True)
    try:
        torch.onnx.export(model, args=(), kwargs=example, f=out_dir / "model.onnx", input_names=list(example),
                          output_names=["logits"], dynamic_shapes={name: dims for name in example}, dynamo=True,
                          external_data=False, verbose=False)
    except Exception as err:  # the exporter raises many types; all mean "this model does not export"
        raise SlothlineError(f"export.formats: onnx: torch's exporter failed on {model_dir} "
                             f"({err.__class__.__name__}: {str(err)[:500]})") from None
    tokenizer.save_pretrained(out_dir)
    model.config.save_pretrained(out_dir)


def check_onnx(onnx_file: Path, model_dir: Path, rows: list[dict], batch_size: int = 16) -> dict:
    """The ONNX model's logits against transformers' on `rows`, in batches; fails beyond ONNX_TOLERANCE."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    model, tokenizer = load(model_dir)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    context = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    largest, agree = 0.0, 0
    for start in range(0, len(rows), batch_size):
        inputs = batch(tokenizer, encode(tokenizer, rows[start : start + batch_size], context))
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
