"""The vision kind: its three data formats, image checks, answer-only labels, the builtin Qwen3-VL, LoRA
scoping, merge and export, and `dvc repro` of the vision default (configs/vision.yaml)."""

import base64
import io
import json
import os
import shutil
import subprocess
import time

import pytest
import torch
import yaml
from PIL import Image

from stages import prepare
from stages.lib.errors import SlothlineError
from stages.lib.formats import RowError, to_messages
from stages.lib.kinds import vision
from stages.lib.params import LoraParams
from stages.lib.vision_formats import CONVERTERS
from tests.conftest import ROOT

QUESTION = [{"type": "image", "image": "red.png"}, {"type": "text", "text": "What colour is it?"}]


@pytest.fixture(scope="module")
def processor(builtin_cache):
    from stages.lib.models import resolve_model

    return vision.load_processor(resolve_model("builtin:tiny-qwen3-vl"), None)


def convert(row, fmt):
    return to_messages(row, fmt, None, CONVERTERS)


def png(colour, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- formats -----------------------------------------------------------------------------------------

def test_messages_keep_image_parts_in_order():
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"},
                                     {"type": "image_url", "image_url": {"url": "a.png"}},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                                     {"type": "image", "image": "c.png"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
    ]}
    assert convert(row, "messages") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": "a.png"},
                                     {"type": "image", "image": "data:image/png;base64,AAAA"},
                                     {"type": "image", "image": "c.png"}]},
        {"role": "assistant", "content": "Same."},
    ]


def test_vqa_rows_become_one_question_about_one_image():
    assert convert({"image": "red.png", "question": "What colour is it?", "answer": "red"}, "vqa") == [
        {"role": "user", "content": QUESTION}, {"role": "assistant", "content": "red"}]


def test_sharegpt_vision_markers_become_image_parts():
    row = {"conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                             {"from": "gpt", "value": "red"},
                             {"from": "human", "value": "And this one <image> here?"},
                             {"from": "gpt", "value": "blue"}],
           "images": ["red.png", "blue.png"]}
    assert convert(row, "sharegpt_vision") == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "text", "text": "And this one"}, {"type": "image", "image": "blue.png"},
                                     {"type": "text", "text": "here?"}]},
        {"role": "assistant", "content": "blue"},
    ]
    llava = {"image": "red.png", "conversations": row["conversations"][:2]}  # LLaVA: one `image`
    assert convert(llava, "sharegpt_vision")[0]["content"] == QUESTION


@pytest.mark.parametrize(("row", "fmt", "message"), [
    ({"conversations": [{"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "x"}],
      "images": ["a.png"]}, "sharegpt_vision",
     "2 <image> markers but 1 images; put one <image> in the human turns for each entry of 'images'"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "<image>"}], "images": ["a.png"]},
     "sharegpt_vision", "conversations[1]: <image> in a assistant turn; images belong in human turns"),
    ({"messages": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": [{"type": "image", "image": "a.png"}]}]}, "messages",
     "turn 1 (assistant): an answer cannot hold an image; images belong in user turns"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                   {"role": "assistant", "content": "x"}]}, "messages",
     'messages[0].content[0]: an image part needs the image\'s path or a data URI, like {"type": "image", "image": '
     '"picture.png"}'),
    ({"image": "a.png", "question": "", "answer": "x"}, "vqa",
     "missing or empty field 'question'; every row needs a non-empty string there"),
])
def test_bad_vision_rows_name_the_problem(row, fmt, message):
    with pytest.raises(RowError) as caught:
        convert(row, fmt)
    assert str(caught.value) == message


def test_bundled_samples_are_what_the_generator_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_vision", ROOT / "data/generate_vision.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    monkeypatch.setattr(generator, "OUT", tmp_path)
    generator.main()
    bundled = ROOT / "data/raw/vision"
    for name in ("messages.jsonl", "vqa.csv", "sharegpt_vision.json"):
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(p.name for p in (bundled / "images").iterdir())


# --- prepare: images ------------------------------------------------------------------------------------

def write_project(workdir, sources, dvc_deps=None, **data):
    """params.yaml for the builtin vision model (and a dvc.yaml whose prepare stage depends on `dvc_deps`)."""
    params = {"model": {"name": "builtin:tiny-qwen3-vl", "max_seq_length": 256},
              "data": {"sources": sources, "total": None, "val_fraction": 0.0, "test_fraction": 0.0, **data}}
    (workdir.path / "params.yaml").write_text(yaml.safe_dump(params))
    if dvc_deps is not None:
        (workdir.path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "x", "deps": dvc_deps}}}))


def vqa_source(workdir, rows, **source):
    return {"path": workdir.write_jsonl("raw/vqa.jsonl", rows), "format": "vqa", **source}


def write_image(workdir, name, data: bytes) -> None:
    path = workdir.path / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_prepare_stores_images_by_content_and_reports_their_sizes(workdir):
    write_image(workdir, "red.png", png("red"))
    write_image(workdir, "copy/red-again.png", png("red"))  # the same picture under another name
    write_image(workdir, "wide.png", png("blue", (200, 100)))
    inline = "data:image/png;base64," + base64.b64encode(png("green", (32, 48))).decode()
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "copy/red-again.png", "question": "Colour?", "answer": "red"},
            {"image": "wide.png", "question": "Colour?", "answer": "blue"},
            {"image": inline, "question": "Colour?", "answer": "green"}]
    write_project(workdir, [vqa_source(workdir, rows)], image_max_pixels=5000)
    prepare.main()
    train = workdir.read_split("train")
    assert len(train) == 3  # the copy of red.png is a duplicate
    stored = sorted(part["image"] for row in train for part in row["messages"][0]["content"] if part["type"] == "image")
    assert all(path.startswith("data/prepared/images/") for path in stored)
    sizes = sorted(Image.open(workdir.path / path).size for path in stored)
    assert sizes == [(32, 48), (64, 64), (100, 50)]  # 200x100 scaled down to at most 5000 pixels
    assert "<|vision_start|><|image_pad|><|vision_end|>Colour?" in train[0]["text"]
    assert "image_sources" not in train[0]
    metrics = json.loads((workdir.path / "metrics/data.json").read_text())
    assert metrics["duplicates_removed"] == 1
    assert metrics["images"]["train"] == {"images": 3, "width_min": 32, "width_mean": 65.3, "width_max": 100,
                                          "height_min": 48, "height_mean": 54.0, "height_max": 64}
    assert metrics["tokens"]["train"]["max"] > 4  # image tokens counted


def prepare_error(workdir, rows, **source) -> str:
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert not (workdir.path / "data/prepared").exists()
    return str(caught.value)


@pytest.mark.parametrize(("name", "data", "problem"), [
    (None, None, "image 'pic.png': no such file (raw/pic.png); image paths are relative to the data file"),
    ("pic.png", png("red")[:60], "image 'pic.png': corrupt or truncated PNG file"),
    ("pic.png", b"just text", "image 'pic.png': not an image file of a supported format (PNG, JPEG, WEBP, BMP, GIF)"),
    ("pic.png", None, "image 'pic.png': TIFF images are not supported; convert it to one of PNG, JPEG, WEBP, BMP, GIF"),
    ("pic.png", png("red", (10, 10)), "image 'pic.png': 10x10 = 100 pixels, fewer than data.image_min_pixels (1024)"),
])
def test_bad_images_fail_with_file_row_and_image(workdir, name, data, problem):
    if name and data is None:  # a TIFF file named .png
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
        data = buffer.getvalue()
    if name:
        write_image(workdir, name, data)
    rows = [{"image": "pic.png", "question": "Colour?", "answer": "red"}]
    write_project(workdir, [vqa_source(workdir, rows)], image_min_pixels=1024)
    message = prepare_error(workdir, rows)
    assert message.startswith(f"raw/vqa.jsonl:1: {problem}") and "on_error: skip" in message


def test_bad_images_are_skipped_and_counted_with_on_error_skip(workdir):
    write_image(workdir, "red.png", png("red"))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "missing.png", "question": "Colour?", "answer": "blue"}]
    write_project(workdir, [vqa_source(workdir, rows, on_error="skip")])
    prepare.main()
    assert json.loads((workdir.path / "metrics/data.json").read_text())["rows_skipped"] == 1


def test_images_outside_prepare_deps_fail_even_with_on_error_skip(workdir):
    write_image(workdir, "red.png", png("red"))
    (workdir.path / "elsewhere").mkdir()
    (workdir.path / "elsewhere/blue.png").write_bytes(png("blue"))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "../elsewhere/blue.png", "question": "Colour?", "answer": "blue"}]
    write_project(workdir, [vqa_source(workdir, rows, on_error="skip")], dvc_deps=["raw"])
    message = prepare_error(workdir, rows)
    assert message.startswith("raw/vqa.jsonl:2: image '../elsewhere/blue.png': raw/../elsewhere/blue.png is not under "
                              "a dependency of the prepare stage in dvc.yaml (raw)")


def test_rows_longer_than_max_seq_length_leave_train(workdir):
    write_image(workdir, "big.png", png("red", (256, 256)))  # 64 image tokens
    write_image(workdir, "small.png", png("red"))  # 4
    rows = [{"image": "big.png", "question": "Colour?", "answer": "red"},
            {"image": "small.png", "question": "Colour?", "answer": "red"}]
    write_project(workdir, [vqa_source(workdir, rows)])
    params = yaml.safe_load((workdir.path / "params.yaml").read_text())
    params["model"]["max_seq_length"] = 40
    (workdir.path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare.main()
    assert len(workdir.read_split("train")) == 1
    assert json.loads((workdir.path / "metrics/data.json").read_text())["tokens"]["train"]["rows_dropped_too_long"] == 1


# --- labels --------------------------------------------------------------------------------------------

def test_labels_are_the_answers_only(processor, tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
    picture = {"type": "image", "image": str(tmp_path / "red.png")}
    chats = [
        [{"role": "user", "content": [picture, {"type": "text", "text": "Colour?"}]},
         {"role": "assistant", "content": "red"}],
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [picture, {"type": "text", "text": "Colour?"}]},
         {"role": "assistant", "content": "red"},
         {"role": "user", "content": "And in capitals?"},
         {"role": "assistant", "content": "RED"}],
    ]
    rows = [{"messages": chat, "text": processor.apply_chat_template(chat)} for chat in chats]
    batch = vision.AnswerCollator(processor, ("<|im_start|>user\n", "<|im_start|>assistant\n"))(rows)
    tokenizer = processor.tokenizer
    trained = [tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
               for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert trained == ["red<|im_end|>", "red<|im_end|>RED<|im_end|>"]
    assert all(label in (-100, token) for token, label in zip(batch["input_ids"].flatten(), batch["labels"].flatten()))
    assert (batch["input_ids"] == processor.image_token_id).sum() == 8  # two 64x64 images, 4 tokens each
    assert batch["pixel_values"].shape[0] == 2 * 16  # 16 patches each
    everything = vision.AnswerCollator(processor, None)(rows)["labels"]
    assert (everything[batch["attention_mask"] == 1] == -100).sum() == 8  # only the image tokens


def test_answer_labels_stop_at_the_end_of_turn_or_the_next_marker():
    user, assistant, eos = [1, 2], [1, 3], 9
    ids = [1, 2, 5, 9, 1, 3, 6, 7, 9, 4, 1, 3, 8]  # user 5 <eos> assistant 6 7 <eos> 4 assistant 8 (cut off)
    assert vision.answer_labels(ids, user, assistant, eos) == [-100] * 6 + [6, 7, 9, -100, -100, -100, 8]


# --- model, LoRA, trainer -------------------------------------------------------------------------------

def test_tiny_qwen3_vl_builds_deterministically(tmp_path):
    from transformers import AutoConfig

    from stages.lib.models import ensure_builtin

    first = ensure_builtin("tiny-qwen3-vl", tmp_path / "one")
    second = ensure_builtin("tiny-qwen3-vl", tmp_path / "two")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    config = AutoConfig.from_pretrained(first)
    text, sight = config.text_config, config.vision_config
    assert sight.out_hidden_size == text.hidden_size
    assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2
    assert int(sight.num_position_embeddings ** 0.5) ** 2 == sight.num_position_embeddings
    assert all(i < sight.depth for i in sight.deepstack_visual_indexes)
    images = json.loads((first / "processor_config.json").read_text())["image_processor"]
    assert (images["patch_size"], images["merge_size"], images["temporal_patch_size"]) == (
        sight.patch_size, sight.spatial_merge_size, sight.temporal_patch_size)


def adapted_modules(flags: dict) -> set[str]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from stages.lib.models import resolve_model

    lora = LoraParams(target_modules=["q_proj", "down_proj", "qkv", "linear_fc1"], **flags)
    model = AutoModelForImageTextToText.from_pretrained(resolve_model("builtin:tiny-qwen3-vl"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=vision.lora_target_regex(lora)))
    return {name.removeprefix("base_model.model.model.") for name, module in model.named_modules() if hasattr(module, "lora_A")}


def test_finetune_flags_choose_towers_and_blocks_as_unsloth_does(builtin_cache):
    everything = adapted_modules({})
    assert {"visual.blocks.1.attn.qkv", "visual.blocks.0.mlp.linear_fc1", "language_model.layers.3.self_attn.q_proj",
            "language_model.layers.0.mlp.down_proj"} <= everything
    assert not any("merger" in name for name in everything)  # no attention or MLP tag: Unsloth leaves them out
    assert len(everything) == 2 * 2 + 4 * 2
    language = adapted_modules({"finetune_vision_layers": False})
    assert language == {name for name in everything if name.startswith("language_model.")}
    attention = adapted_modules({"finetune_mlp_modules": False})
    assert attention == {name for name in everything if "attn" in name}
    with pytest.raises(SlothlineError, match="nothing left to train"):
        vision.lora_target_regex(LoraParams(finetune_attention_modules=False, finetune_mlp_modules=False))


def test_packing_is_refused_for_vision(builtin_cache):
    from stages.lib.params import Params

    params = Params.model_validate({"model": {"name": "builtin:tiny-qwen3-vl"}, "train": {"packing": True},
                                    "data": {"sources": [{"path": "a.jsonl", "format": "vqa"}]}})
    with pytest.raises(SlothlineError, match="train.packing: packing is not supported for vision models"):
        vision.build_trainer(None, params, None, None, [], [], "unused", [])


def test_finetune_flags_are_refused_for_text_models():
    from stages.lib.kinds import causal_lm
    from stages.lib.params import Params

    params = Params.model_validate({"lora": {"finetune_vision_layers": False},
                                    "data": {"sources": [{"path": "a.jsonl", "format": "alpaca"}]}})
    with pytest.raises(SlothlineError, match="lora.finetune_vision_layers: false only means something for vision"):
        causal_lm.lora_kwargs(params, None, "hf")


# --- merge and export -----------------------------------------------------------------------------------

def test_merged_vision_model_loads_with_plain_transformers_and_matches_the_adapter(workdir, processor):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stages import export, merge
    from stages.lib.artifacts import Manifest
    from stages.lib.models import resolve_model

    source = resolve_model("builtin:tiny-qwen3-vl")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(source),
                           LoraConfig(r=8, target_modules=vision.lora_target_regex(LoraParams(target_modules=[
                               "q_proj", "v_proj", "qkv", "linear_fc1"])), init_lora_weights=False))
    model.save_pretrained(workdir.path / "models/adapter")
    processor.save_pretrained(workdir.path / "models/adapter")
    Manifest(kind="vision", method="lora", base_model="builtin:tiny-qwen3-vl", revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=256).write(workdir.path / "models/adapter")
    (workdir.path / "params.yaml").write_text("data: {sources: [{path: a.jsonl, format: vqa}]}\nexport: {formats: []}\n")
    merge.main()
    merged_dir = workdir.path / "models/merged"
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)  # no PEFT
    loaded = AutoProcessor.from_pretrained(merged_dir)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    inputs = loaded(text=[loaded.apply_chat_template(chat, add_generation_prompt=True)],
                    images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(source), workdir.path / "models/adapter")
    with torch.no_grad():
        expected, got = tuned(**inputs).logits, merged(**inputs).logits
        with tuned.disable_adapter():
            untuned = tuned(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    assert not torch.allclose(untuned, expected, atol=1e-2)

    export.main()  # formats: [] writes nothing and succeeds
    (workdir.path / "params.yaml").write_text("data: {sources: [{path: a.jsonl, format: vqa}]}\nexport: {formats: [gguf]}\n")
    with pytest.raises(SlothlineError) as caught:
        export.main()
    assert str(caught.value) == (
        "export.formats: gguf is not offered for vision models; their export is models/merged/, a Hugging Face "
        "directory that transformers' AutoModelForImageTextToText and AutoProcessor load; set export.formats: []")


# --- the vision default, end to end ---------------------------------------------------------------------

def dvc(project, *args):
    # On a CPU shared with other busy processes, OpenMP threads that spin while they wait make the tiny
    # model's training about ten times slower (850 s for the DAG instead of 94 s, measured); waiting
    # passively costs nothing here.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    result = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.e2e
def test_vision_default_learns_the_bundled_pictures(dvc_project):
    """`cp configs/vision.yaml params.yaml && dvc repro`, as README says."""
    shutil.copy(dvc_project / "configs/vision.yaml", dvc_project / "params.yaml")
    subprocess.run(["git", "commit", "-qam", "vision default"], cwd=dvc_project, check=True)
    started = time.monotonic()
    output = dvc(dvc_project, "repro").stdout
    print(f"vision DAG: {time.monotonic() - started:.0f} s (load average {os.getloadavg()[0]:.1f})")
    assert [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")] == [
        "check_params", "prepare", "train", "evaluate", "merge", "export", "push"]
    data = json.loads((dvc_project / "metrics/data.json").read_text())
    assert data["images"]["train"]["images"] == data["train_rows"] > 300
    assert json.loads((dvc_project / "metrics/train.json").read_text())["kind"] == "vision"
    scores = json.loads((dvc_project / "metrics/eval.json").read_text())
    print(scores)
    assert scores["tuned"]["exact_match"] >= 50 and scores["base"]["exact_match"] <= 5
    assert scores["tuned"]["loss"] < scores["base"]["loss"]
    report = (dvc_project / "metrics/report.md").read_text()
    thumbnails = [line.split('src="')[1].split('"')[0] for line in report.splitlines() if "<img" in line]
    assert len(thumbnails) == 5 and all((dvc_project / "metrics" / path).is_file() for path in thumbnails)
    assert json.loads((dvc_project / "metrics/export.json").read_text()) == {}
    assert (dvc_project / "models/merged/model.safetensors").is_file()
    assert dvc(dvc_project, "status").stdout.strip() == "Data and pipelines are up to date."


def test_images_load_as_a_viewer_shows_them(tmp_path):
    """16-bit grayscale (scientific and medical PNGs) is scaled to 8 bits, not clipped to white; a JPEG's
    EXIF orientation is applied."""
    import numpy as np

    from stages.lib.images import open_rgb

    gradient = np.linspace(13364, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    pixels = np.asarray(open_rgb(tmp_path / "gray16.png"))
    assert pixels.shape == (32, 32, 3) and pixels.min() == 13364 // 257 and pixels.max() == 255
    picture = Image.new("RGB", (120, 60), "red")
    exif = picture.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_rgb(tmp_path / "rotated.jpg").size == (60, 120)
