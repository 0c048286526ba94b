"""The Unsloth backend on a CUDA GPU (`pytest -m gpu`): the train stage end to end, and label parity."""

import json

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def prepared(workdir):
    from stages import prepare
    from tests.conftest import ROOT

    sources = [{"path": str(ROOT / "data/raw" / name), "format": fmt}
               for name, fmt in [("alpaca.jsonl", "alpaca"), ("sharegpt.json", "sharegpt"),
                                 ("messages.jsonl", "messages"), ("reasoning.jsonl", "reasoning")]]
    workdir.write_params(sources, total=400, val_fraction=0.05)
    prepare.main()
    params_file = workdir.path / "params.yaml"
    params_file.write_text(params_file.read_text() + "train: {backend: unsloth, max_steps: 30, learning_rate: 0.005}\n")
    return workdir


def test_unsloth_labels_match_the_hf_backend_masks(prepared):
    """Unsloth's train_on_responses_only and our assistant_masks train on exactly the same tokens."""
    from stages.lib import backends
    from stages.lib.params import load_params
    from stages.lib.templates import tokenize_for_training, turn_markers

    params = load_params()
    runtime = backends.choose_runtime(params)
    assert runtime.backend == "unsloth"
    model, tokenizer = backends.load_model(runtime, params)
    rows = prepared.read_split("train")
    markers = turn_markers([r["text"] for r in rows])
    trainer = backends.build_trainer(runtime, params, model, tokenizer, tokenize_for_training(rows, tokenizer, None),
                                     None, str(prepared.path / "out"), [], markers)
    ours = tokenize_for_training(rows, tokenizer, markers)
    mismatched = sum(
        [t if m else -100 for t, m in zip(mine["input_ids"], mine["assistant_masks"])] != theirs["labels"]
        for mine, theirs in zip(ours, trainer.train_dataset)
    )
    assert mismatched == 0, f"{mismatched} of {len(rows)} rows are labelled differently"


def test_train_stage_on_unsloth(prepared):
    from stages import train

    train.main()
    metrics = json.loads((prepared.path / "metrics/train.json").read_text())
    assert metrics["backend"] == "unsloth" and metrics["device"] != "cpu" and metrics["steps"] == 30
    assert (prepared.path / "models/adapter/adapter_config.json").is_file()
