"""Training: backend choice, response-only labels, packing isolation, and a short run on the hf backend."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from slothline import backends, kinds
from slothline.artifacts import CHECKPOINTS_DIR, LIVE_DIR, LOSS_PLOT, TRAIN_METRICS, SFT_DIR
from slothline.errors import SlothlineError
from slothline.kinds import causal_lm
from slothline.kinds._generative.chat import turn_markers
from slothline.runtime import Capabilities, resolve
from stages import train
from tests.conftest import load, write_params

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4."},
]
STAGE = [sys.executable, "-m", "stages.train"]  # as DVC runs it

CPU = Capabilities(cuda=False)


def labels_from_trl(tiny_qwen3, tokenizer, texts):
    """Labels as TRL's SFTTrainer builds them from our dataset (its `train_dataset` after preparation)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    dataset = causal_lm.tokenized([{"text": t} for t in texts], tokenizer, turn_markers(texts))
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_qwen3),
        args=SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none", max_length=512),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    return [(row["input_ids"], row["labels"]) for row in trainer.train_dataset]


def test_labels_are_ignored_exactly_on_non_assistant_tokens(tiny_qwen3, tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    [(input_ids, labels)] = labels_from_trl(tiny_qwen3, tokenizer, [text])
    trained = [i for i, label in zip(input_ids, labels) if label != -100]
    assert all(label in (-100, token) for token, label in zip(input_ids, labels))
    # Both answers with their closing <|im_end|>, the thinking block included; nothing of system or user turns.
    assert tokenizer.decode(trained) == (
        "Hi!<|im_end|><think>\n2 + 2 = 4\n</think>\n\nThe answer is 4.<|im_end|>"
    )
    ignored = tokenizer.decode([i for i, label in zip(input_ids, labels) if label == -100])
    assert ignored == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
        "\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n\n"
    )


def test_alpaca_prompt_labels_only_the_response(tiny_qwen3, tokenizer):
    from slothline.kinds._generative.chat import ALPACA_PROMPT

    text = ALPACA_PROMPT.format("Uppercase cat.", "CAT") + tokenizer.eos_token
    [(input_ids, labels)] = labels_from_trl(tiny_qwen3, tokenizer, [text])
    assert tokenizer.decode([i for i, label in zip(input_ids, labels) if label != -100]) == "CAT<|im_end|>"


def test_packed_examples_do_not_attend_to_each_other(tiny_qwen3, tokenizer):
    """Two examples packed into one padding-free row give the same logits as each alone."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, attn_implementation="sdpa")
    model.eval()
    first, second = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Hello there!", "Reverse: abc"))
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    packed = collator([{"input_ids": first}, {"input_ids": second}])
    assert packed["input_ids"].shape == (1, len(first) + len(second))
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in (first, second)]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-4)


def test_a_resumed_curve_drops_the_stopped_runs_later_points_and_a_cut_short_summary(tmp_path):
    """A kill can stop dvclive while it writes metrics.json (in place) or a table row: the resumed run's Live
    reads neither, and the points after the checkpoint go."""
    from dvclive import Live

    from slothline.training import drop_points_after

    table = tmp_path / "plots/metrics/loss.tsv"
    table.parent.mkdir(parents=True)
    table.write_text("step\tloss\n2\t1.5\n4\t1.2\n6\t1.")
    (tmp_path / "metrics.json").write_text('{"step": 6, "lo')
    drop_points_after(tmp_path, 4)
    assert table.read_text() == "step\tloss\n2\t1.5\n4\t1.2\n" and not (tmp_path / "metrics.json").exists()
    Live(str(tmp_path), resume=True, dvcyaml=False, save_dvc_exp=False).end()


def test_resume_point_skips_incomplete_and_foreign_checkpoints(tmp_path):
    from slothline.checkpoints import resume_point

    for step in (4, 12):
        (tmp_path / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-16").mkdir()  # the run died while writing it
    (tmp_path / "checkpoint-20").mkdir()  # ... or while writing its trainer_state.json
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text('{"global_step": 2')
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": "same"}))
    assert resume_point(tmp_path, "same") == str(tmp_path / "checkpoint-12")
    assert not (tmp_path / "checkpoint-16").exists() and not (tmp_path / "checkpoint-20").exists()
    assert resume_point(tmp_path, "other") is None
    assert not list(tmp_path.glob("checkpoint-*"))


def repeat_rows(words) -> list[dict]:
    return [{"instruction": f"Repeat {w}.", "output": f"{w} {w}"} for w in words]


PAIRS = [a + b for a in "abcdefgh" for b in "xyzuvw"]  # 48 words


def set_up(workdir, rows: list[dict], val_fraction: float = 0.0, **train_settings) -> None:
    """`rows` as the one alpaca source, read whole (a val split of `val_fraction`, no test split), and the
    `train` settings."""
    write_params(workdir.path, data={"sources": [{"path": workdir.write_jsonl("a.jsonl", rows), "format": "alpaca"}],
                                     "total": None, "val_fraction": val_fraction, "test_fraction": 0.0},
                 train=train_settings)


@pytest.fixture
def trained(workdir):
    """A 12-step hf run on 48 bundled-style rows."""
    from stages import prepare

    set_up(workdir, repeat_rows(PAIRS), val_fraction=0.125, max_steps=12, per_device_batch_size=4,
           learning_rate=0.005, warmup_steps=5, save_steps=5, logging_steps=2, eval_steps=5)
    prepare.main()
    train.main()
    return workdir


def test_cpu_training_uses_the_model_loss_even_where_trl_kernel_imports(tiny_qwen3, tokenizer):
    """A CUDA build of torch (PyPI's default, as here) imports TRL's Triton loss kernel on a CPU machine too,
    where it fails at the first step: the loss follows the device, not what imports."""
    from transformers import AutoModelForCausalLM

    setting = load(train={"max_steps": 1})
    runtime = resolve(setting, CPU)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    rows = [{"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>"}]
    trainer = causal_lm.build_trainer(backends.get(runtime), runtime, setting, model, tokenizer, rows, [],
                                      "/tmp/unused", [])
    assert type(trainer).__name__ == "ModelLossSFTTrainer"
    assert trainer.train().training_loss > 0


def test_padding_free_batches_train_as_the_padded_ones(workdir, tiny_qwen3, tokenizer):
    """The same rows per step, concatenated instead of padded: the same losses and (to float noise that Adam
    scales to its step size) the same weights after a few steps (here through the CPU's attention; a GPU test
    checks varlen)."""
    rows = [{"text": f"<|im_start|>user\nRepeat {w}.<|im_end|>\n<|im_start|>assistant\n{' '.join([w] * (i % 7 + 1))}"
                     "<|im_end|>\n"} for i, w in enumerate(PAIRS[:16])]
    results = {}
    for padding_free in (False, True):
        setting = load(train={"max_steps": 3, "per_device_batch_size": 8, "padding_free": padding_free,
                              "learning_rate": 0.01, "warmup_steps": 0, "logging_steps": 1})
        runtime = resolve(setting, CPU)
        backend = backends.get(runtime)
        model, _ = backends.load_for_training(causal_lm, runtime, setting, None)
        trainer = causal_lm.build_trainer(backend, runtime, setting, model, tokenizer, rows, [],
                                          str(workdir.path / f"out{padding_free}"), [])
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("position_ids" in batch and batch["input_ids"].shape[0] == 1) == padding_free
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        results[padding_free] = losses, [p.detach().clone() for p in model.parameters() if p.requires_grad]
    (padded, padded_weights), (joined, joined_weights) = results[False], results[True]
    assert joined == pytest.approx(padded, rel=1e-4)
    assert all(torch.allclose(a, b, atol=5e-4) for a, b in zip(padded_weights, joined_weights))  # Adam: lr-sized steps


@pytest.mark.parametrize("padding_free", [False, True])
def test_the_token_count_is_read_where_it_is_used_and_matches_transformers(workdir, tokenizer, padding_free):
    """prepare_trainer counts the input tokens on the device and reads them only at logs, saves, evaluations and
    epoch ends (transformers reads them every step, making the CPU wait for the GPU); the counts, those logged
    included, are transformers' own, for padded batches (attention masks) and concatenated ones (none)."""
    from transformers import TrainerCallback

    from slothline import training

    rows = [{"text": f"<|im_start|>user\nRepeat {w}.<|im_end|>\n<|im_start|>assistant\n{' '.join([w] * (i % 5 + 1))}"
                     "<|im_end|>\n"} for i, w in enumerate(PAIRS[:10])]

    class SeenAtStepEnd(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.num_input_tokens_seen)

    def run(lazy: bool):
        setting = load(train={"epochs": 2, "per_device_batch_size": 3, "padding_free": padding_free,
                              "logging_steps": 3, "save_steps": 5})
        runtime = resolve(setting, CPU)
        backend = backends.get(runtime)
        model, _ = backends.load_for_training(causal_lm, runtime, setting, None)
        trainer = causal_lm.build_trainer(backend, runtime, setting, model, tokenizer, rows, [],
                                          str(workdir.path / f"out{lazy}"), [])
        if lazy:
            training.prepare_trainer(trainer, model, backend, runtime, setting)
        seen = SeenAtStepEnd()
        trainer.add_callback(seen)  # after the count's own callback, as the dvclive one
        trainer.train()
        logged = [log["num_input_tokens_seen"] for log in trainer.state.log_history if "loss" in log]
        return trainer.state.num_input_tokens_seen, logged, seen.seen

    total, logged, seen = run(lazy=True)
    assert (total, logged) == run(lazy=False)[:2] and total > 0
    # 8 steps, 4 an epoch: read at the logs (3, 6), the save (5), the epoch ends (4, 8); not at steps 1, 2, 7
    assert seen[0] == seen[1] == 0 and seen[6] == seen[5] < seen[7] == total


def test_hf_run_writes_adapter_and_metrics(trained, tiny_qwen3):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    metrics = json.loads((trained.path / TRAIN_METRICS).read_text())
    assert metrics["backend"] == "hf" and metrics["device"] == "cpu" and metrics["steps"] == 12
    assert metrics["optim"] == "adamw_torch" and metrics["precision"] == "float32"
    assert metrics["kind"] == "causal_lm" and metrics["method"] == "lora"
    assert metrics["val_loss"] is not None and metrics["train_tokens_per_s"] > 0 and metrics["peak_mem_gib"] > 0
    assert metrics["loss_on"] == "answers" and metrics["val_loss_tokens"] > 0 and metrics["val_loss_tokens_cut"] == 0
    losses = [float(line.split("\t")[-1]) for line in
              (trained.path / LIVE_DIR / "plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    val_losses = (trained.path / LIVE_DIR / "plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]
    assert len(val_losses) >= 2  # every train.eval_steps, and once at the end
    assert (trained.path / LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
    tuned_dir = trained.path / SFT_DIR
    assert (tuned_dir / "adapter_config.json").is_file() and (tuned_dir / "tokenizer.json").is_file()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen3), tuned_dir)
    assert tuned.peft_config["default"].r == 16
    assert not list((trained.path / CHECKPOINTS_DIR).glob("checkpoint-*"))


def test_train_json_says_which_answer_tokens_a_shorter_max_seq_length_leaves_out_of_its_losses(tokenizer):
    """A shorter model.max_seq_length lowers val_loss by cutting the long answers' hard tokens off: the metrics
    beside the loss say how many answer tokens it covers, and how many the cut left out."""
    from transformers import GenerationConfig

    model = SimpleNamespace(generation_config=GenerationConfig())
    prompt = "<|im_start|>user\nCount.<|im_end|>\n<|im_start|>assistant\n"
    answers = ["one two", " ".join(["word"] * 60)]
    rows = [{"text": prompt + answer + "<|im_end|>\n"} for answer in answers]
    answer_ids = [len(tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]) for answer in answers]
    prompt_ids = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    whole = causal_lm.loss_coverage(model, tokenizer, load(model={"max_seq_length": 2048}), rows, rows[:1])
    assert whole == {"loss_on": "answers", "train_loss_tokens": sum(answer_ids), "train_loss_tokens_cut": 0,
                     "val_loss_tokens": answer_ids[0], "val_loss_tokens_cut": 0}
    cut_at = prompt_ids + 10  # the short answer fits, the long one keeps its first 10 tokens
    short = causal_lm.loss_coverage(model, tokenizer, load(model={"max_seq_length": cut_at}), rows, rows[:1])
    assert (short["train_loss_tokens"], short["train_loss_tokens_cut"]) == (answer_ids[0] + 10, answer_ids[1] - 10)
    whole_text = causal_lm.loss_coverage(model, tokenizer, load(train={"train_on_responses_only": False}), rows, [])
    assert whole_text["loss_on"] == "whole text" and whole_text["val_loss_tokens"] == 0
    assert whole_text["train_loss_tokens"] == 2 * (prompt_ids - 1) + sum(answer_ids) + 2  # the final newlines too


def test_a_run_whose_max_seq_length_cuts_answers_says_so(workdir, capsys):
    from stages import prepare

    rows = [{"instruction": f"Repeat {w}.", "output": " ".join([w] * 40)} for w in PAIRS]
    write_params(workdir.path, model={"max_seq_length": 40},
                 data={"sources": [{"path": workdir.write_jsonl("a.jsonl", rows), "format": "alpaca"}],
                       "total": None, "val_fraction": 0.125, "test_fraction": 0.0},
                 train={"max_steps": 1, "per_device_batch_size": 4})
    prepare.main()
    train.main()
    metrics = json.loads((workdir.path / TRAIN_METRICS).read_text())
    assert metrics["train_loss_tokens"] > 0 and metrics["train_loss_tokens_cut"] > metrics["train_loss_tokens"]
    assert metrics["val_loss_tokens_cut"] > 0
    assert "note: model.max_seq_length 40 cuts rows: train_loss covers" in capsys.readouterr().out


def test_lora_params_reach_the_peft_config():
    from peft import LoraConfig
    from slothline.backends.lora import lora_settings

    qwen3 = SimpleNamespace(config=SimpleNamespace(model_type="qwen3"))
    config = LoraConfig(**lora_settings(load(lora={"r": 8, "alpha": 4, "dropout": 0.1, "use_rslora": True,
                                                   "target_modules": ["q_proj"], "bias": "lora_only"}), qwen3))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (8, 4, 0.1, True)
    assert config.target_modules == {"q_proj"} and config.bias == "lora_only" and config.init_lora_weights is True
    default = LoraConfig(**lora_settings(load(lora={"target_modules": None}), qwen3))  # null: the family's default
    assert default.target_modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_full_finetuning_writes_a_whole_model(workdir):
    """train.full_finetuning trains every weight; models/sft then holds a plain checkpoint."""
    from stages import prepare
    from transformers import AutoModelForCausalLM

    set_up(workdir, repeat_rows(["cat", "dog", "sun", "sky"]), full_finetuning=True, max_steps=3,
           per_device_batch_size=2, learning_rate=0.001)
    prepare.main()
    train.main()
    metrics = json.loads((workdir.path / TRAIN_METRICS).read_text())
    model = AutoModelForCausalLM.from_pretrained(workdir.path / SFT_DIR)
    assert metrics["trainable_params"] == sum(p.numel() for p in model.parameters()) and metrics["method"] == "full"
    assert not (workdir.path / SFT_DIR / "adapter_config.json").exists()


def test_unknown_scheduler_is_a_clear_error():
    bad = load(train={"lr_scheduler": "cosine_warm"})
    runtime = resolve(bad, CPU)
    rows = [{"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>"}]
    with pytest.raises(SlothlineError, match="check train.lr_scheduler, train.optim.*cosine_warm"):
        causal_lm.build_trainer(backends.get(runtime), runtime, bad, None, None, rows, [], "/tmp/unused", [])


def test_scheduler_arguments_reach_the_trainer(tiny_qwen3, tokenizer):
    from transformers import AutoModelForCausalLM

    setting = load(train={"max_steps": 2, "lr_scheduler": "cosine_with_min_lr",
                          "lr_scheduler_kwargs": {"min_lr_rate": 0.5}, "warmup_steps": 0})
    runtime = resolve(setting, CPU)
    rows = [{"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>"}]
    trainer = causal_lm.build_trainer(backends.get(runtime), runtime, setting,
                                      AutoModelForCausalLM.from_pretrained(tiny_qwen3), tokenizer, rows, [], "/tmp/unused", [])
    trainer.train()
    assert trainer.args.lr_scheduler_kwargs == {"min_lr_rate": 0.5}
    assert trainer.lr_scheduler.get_last_lr()[0] >= 0.5 * setting.train.learning_rate


def test_params_changed_while_training_fail_the_stage_and_write_nothing(workdir, monkeypatch):
    """Another `dvc exp run -S lora.r=8` may rewrite params.yaml while this train (r=16) runs: recording r=8
    beside an r=16 adapter would be a lie that `dvc status` cannot see, so the stage fails instead."""
    from slothline import training
    from stages import prepare

    set_up(workdir, repeat_rows(["cat", "dog", "sun", "sky"]), max_steps=2, per_device_batch_size=2)
    prepare.main()
    params_file = workdir.path / "params.yaml"

    def rewrite_params_then_reset(runtime):  # called just before the trainer trains
        params_file.write_text(params_file.read_text().replace("  r: 16\n", "  r: 8\n"))

    monkeypatch.setattr(training, "reset_peak_memory", rewrite_params_then_reset)
    with pytest.raises(SlothlineError, match=r"params.yaml: changed while train ran \(lora.r: 16 -> 8\).*nothing was "
                                             r"written: run `dvc repro` again"):
        train.main()
    assert not (workdir.path / SFT_DIR).exists() and not (workdir.path / TRAIN_METRICS).exists()


def test_identical_trainings_write_identical_adapters(trained):
    """Two processes (different hash seeds) training the same thing write byte-identical adapter
    directories, so DVC does not rerun evaluate, merge and export for nothing."""
    import hashlib
    import os

    def train_and_hash(hash_seed: str) -> dict:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(STAGE, cwd=trained.path, env=env, check=True, capture_output=True)
        tuned_dir = trained.path / SFT_DIR
        return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(tuned_dir.iterdir())}

    assert train_and_hash("1") == train_and_hash("2")


@pytest.mark.parametrize("targets", [["q_proj", "foo"], ["q_proj", "dwon_proj"]])
def test_a_target_module_that_matches_nothing_is_a_clear_error(targets):
    """PEFT only complains when no name matches: one typo among good names would silently train less."""
    setting = load(lora={"target_modules": targets})
    with pytest.raises(SlothlineError, match=rf"lora.target_modules: {targets[1]} matched no layer of this model; "
                                             r"its linear layers are: down_proj, gate_proj, k_proj, o_proj, q_proj, "
                                             r"up_proj, v_proj"):
        backends.load_for_training(causal_lm, resolve(setting, CPU), setting)


def test_one_step_reports_its_loss_and_warns_that_warmup_never_ends(workdir, capsys):
    from stages import prepare

    set_up(workdir, repeat_rows(["cat", "dog", "sun", "sky"]), max_steps=1, warmup_steps=10, logging_steps=5)
    prepare.main()
    train.main()
    metrics = json.loads((workdir.path / TRAIN_METRICS).read_text())
    assert metrics["steps"] == 1 and metrics["train_loss"] > 0
    assert "warning: train.warmup_steps (10) >= the 1 training steps" in capsys.readouterr().out


DIVERGING = dict(max_steps=40, per_device_batch_size=4, learning_rate=5.0, lr_scheduler="constant", warmup_steps=0,
                 eval_steps=2, save_steps=2, logging_steps=2, early_stopping_patience=2)  # the val loss climbs


def test_early_stopping_keeps_the_best_model_and_says_why_training_stopped(workdir, tiny_qwen3):
    """A learning rate that makes the val loss climb: training stops after `early_stopping_patience`
    evaluations without improvement, and the saved model is the best evaluation's."""
    from peft import PeftModel
    from stages import prepare
    from transformers import AutoModelForCausalLM

    set_up(workdir, repeat_rows(PAIRS), val_fraction=0.25, load_best_model_at_end=True, **DIVERGING)
    prepare.main()
    train.main()
    metrics = json.loads((workdir.path / TRAIN_METRICS).read_text())
    val_losses = {int(line.split("\t")[0]): float(line.split("\t")[1]) for line in
                  (workdir.path / LIVE_DIR / "plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]}
    assert metrics["stopped_early"] and metrics["steps"] < 40 and metrics["metric_for_best_model"] == "loss"
    assert metrics["best_metric"] == pytest.approx(min(val_losses.values()), abs=1e-4)
    assert val_losses[metrics["best_step"]] == pytest.approx(metrics["best_metric"], abs=1e-4)
    assert metrics["val_loss"] == pytest.approx(metrics["best_metric"], abs=1e-3)  # the best model was kept
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert PeftModel.from_pretrained(base, workdir.path / SFT_DIR) is not None


@pytest.mark.parametrize(("train_settings", "message"), [
    ({"load_best_model_at_end": True, "save_steps": 50, "eval_steps": 20},
     r"save_steps \(50\) must be a multiple of eval_steps \(20\)"),
    ({"early_stopping_patience": 0}, r"train.early_stopping_patience: Input should be greater than or equal to 1"),
])
def test_best_model_settings_that_cannot_work_are_refused(tmp_path, train_settings, message):
    from slothline.params import load_params

    write_params(tmp_path, train=train_settings)
    with pytest.raises(SlothlineError, match=message):
        load_params(tmp_path / "params.yaml")


def test_train_checks_the_params_itself(workdir):
    """`dvc repro train` runs prepare and train, not check_params: train refuses what check_params would, before
    it reads data or loads a model, not in transformers' EarlyStoppingCallback."""
    write_params(workdir.path, data={"val_fraction": 0.0}, train={"early_stopping_patience": 2})
    with pytest.raises(SlothlineError, match=r"data.val_fraction: 0 leaves empty"):
        train.main()


def test_best_model_needs_a_val_split_and_a_metric_the_kind_measures():
    """Refused at params time (check_params), before prepare and train run."""
    task = kinds.get("causal_lm")
    with pytest.raises(SlothlineError, match=r"judge the model on the val split, which data.val_fraction: 0 leaves "
                                             r"empty; set data.val_fraction > 0"):
        kinds.check(task, load(data={"val_fraction": 0.0}, train={"early_stopping_patience": 2}))
    kinds.check(task, load(data={"val_fraction": 0.1}, train={"early_stopping_patience": 2}))
    with pytest.raises(SlothlineError, match="causal_lm models are measured on the val split by loss, not accuracy"):
        kinds.check(task, load(train={"load_best_model_at_end": True, "metric_for_best_model": "accuracy",
                                      "save_steps": 50, "eval_steps": 50}))


@pytest.mark.parametrize("stop", ["early_stopping", "max_steps"])
def test_a_run_stopped_after_its_last_checkpoint_is_not_trained_further(workdir, monkeypatch, stop):
    """A run that dies after the checkpoint of its last step (early stopping's, or train.max_steps') but before its
    outputs: resumed, it ends as the whole run did. transformers would train on from that checkpoint (it resets
    the stop the checkpoint records), so the steps, the best step, the weights and the mean loss would differ."""
    from safetensors.torch import load_file

    from stages import prepare

    settings = DIVERGING if stop == "early_stopping" else {**DIVERGING, "early_stopping_patience": None, "max_steps": 6}
    set_up(workdir, repeat_rows(PAIRS), val_fraction=0.25, **settings)
    prepare.main()
    train.main()
    whole = json.loads((workdir.path / TRAIN_METRICS).read_text())
    weights = load_file(workdir.path / SFT_DIR / "adapter_model.safetensors")

    def lost_machine(*args, **kwargs):  # the run dies as it starts writing its outputs
        raise SystemExit("lost")

    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        patched.setattr(train, "atomic_dir", lost_machine)
        train.main()
    assert (workdir.path / CHECKPOINTS_DIR / f"checkpoint-{whole['steps']}").is_dir()
    train.main()
    resumed = json.loads((workdir.path / TRAIN_METRICS).read_text())
    assert resumed["resumed_from_step"] == whole["steps"] and resumed["train_tokens"] == 0
    assert {k: resumed[k] for k in ("steps", "best_step", "stopped_early", "train_loss")} == {
        k: whole[k] for k in ("steps", "best_step", "stopped_early", "train_loss")}
    assert resumed["train_loss_avg"] == pytest.approx(whole["train_loss_avg"], rel=1e-3)
    again = load_file(workdir.path / SFT_DIR / "adapter_model.safetensors")
    assert all(torch.equal(again[name], tensor) for name, tensor in weights.items())


def test_a_resumed_run_keeps_its_best_model_bookkeeping(workdir):
    """Killed after a checkpoint that follows its best evaluation and resumed, a run with early stopping stops
    at the same step with the same best step as a run that was never interrupted (the best metric and the
    patience count live in each checkpoint)."""
    import os
    import signal
    import time

    from stages import prepare

    set_up(workdir, repeat_rows(PAIRS), val_fraction=0.25, **DIVERGING)
    prepare.main()
    subprocess.run(STAGE, cwd=workdir.path, check=True, capture_output=True)
    whole = json.loads((workdir.path / TRAIN_METRICS).read_text())
    (workdir.path / TRAIN_METRICS).unlink()
    kill_step = whole["steps"] - DIVERGING["save_steps"]  # the last checkpoint before the stop
    assert whole["stopped_early"] and whole["best_step"] < kill_step

    run = subprocess.Popen(STAGE, cwd=workdir.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = workdir.path / CHECKPOINTS_DIR / f"checkpoint-{kill_step}/trainer_state.json"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert checkpoint.is_file() and not (workdir.path / TRAIN_METRICS).exists()
    tokens_saved = {p: json.loads(p.read_text())["num_input_tokens_seen"]
                    for p in (workdir.path / CHECKPOINTS_DIR).glob("checkpoint-*/trainer_state.json")}
    subprocess.run(STAGE, cwd=workdir.path, check=True, capture_output=True)
    resumed = json.loads((workdir.path / TRAIN_METRICS).read_text())
    assert resumed["resumed_from_step"] >= kill_step
    resumed_from = workdir.path / CHECKPOINTS_DIR / f"checkpoint-{resumed['resumed_from_step']}/trainer_state.json"
    assert tokens_saved[resumed_from] + resumed["train_tokens"] == whole["train_tokens"]  # each checkpoint's count exact
    assert {k: resumed[k] for k in ("steps", "best_step", "stopped_early")} == {
        k: whole[k] for k in ("steps", "best_step", "stopped_early")}
    assert resumed["best_metric"] == pytest.approx(whole["best_metric"], rel=1e-4)


def test_the_best_model_recorded_is_the_checkpoint_loaded_at_the_end():
    """With load_best_model_at_end transformers loads the best saved checkpoint, while its best_global_step follows
    every evaluation, saved or not: train.json records the checkpoint loaded and its metric."""
    from types import SimpleNamespace

    from slothline.training import best_model

    history = [{"step": 10, "eval_loss": 1.5}, {"step": 20, "eval_loss": 1.2}, {"step": 30, "eval_loss": 1.0},
               {"step": 40, "eval_loss": 1.3}]
    state = SimpleNamespace(best_metric=1.0, best_global_step=30, best_model_checkpoint="models/checkpoints/checkpoint-20",
                            log_history=history)
    loading = SimpleNamespace(load_best_model_at_end=True, metric_for_best_model="loss")
    assert best_model(state, loading) == (1.2, 20)
    assert best_model(state, SimpleNamespace(load_best_model_at_end=False, metric_for_best_model="loss")) == (1.0, 30)
    state.best_model_checkpoint = None  # the best evaluations fell between saves: the last weights stay
    assert best_model(state, loading) == (None, None)
