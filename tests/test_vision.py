"""The vision kind: its three data formats, image checks and normalisation, answer-only labels, the builtin
Qwen3-VL, LoRA scoping, merge and export, and the vision default (`dvc exp run -S kind=vision`)."""

import base64
import importlib.util
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from slothline.artifacts import (DATA_METRICS, EVAL_METRICS, EXPORT_DIR, EXPORT_METRICS, IMAGES_SUBDIR, MERGED_DIR, PREPARED_DIR,
                                 REPORT_FILE, TRAIN_METRICS, TUNED_DIR, Manifest)
from slothline.data.formats import to_messages
from slothline.errors import RowError, SlothlineError
from slothline.kinds import vision
from slothline.kinds._generative import AnswerCollator
from slothline.kinds._generative.chat import AnswerMask
from slothline.kinds.vision.formats import CONVERTERS
from slothline.kinds.vision.images import open_rgb, store_image
from slothline.params import load_params
from stages import prepare
from tests.conftest import ROOT, dvc, load, ran_stages, write_params

QUESTION = [{"type": "image", "image": "red.png"}, {"type": "text", "text": "What colour is it?"}]
ORIENTATION = 0x0112  # EXIF tag


@pytest.fixture(scope="module")
def processor(tiny_qwen3_vl):
    return vision.load_processor(tiny_qwen3_vl, None)


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


def test_images_embedded_as_hugging_face_datasets_store_them_become_data_uris():
    """Parquet files and save_to_disk directories of Hugging Face datasets hold images as {"bytes", "path"}; TRL's
    vision datasets put the images in `images` and leave the image parts without a reference."""
    inline = lambda data: "data:image;base64," + base64.b64encode(data).decode()
    embedded = {"bytes": png("red"), "path": "red.png"}
    vqa = convert({"image": embedded, "question": "What colour is it?", "answer": "red"}, "vqa")
    assert vqa[0]["content"][0] == {"type": "image", "image": inline(png("red"))}
    trl = {"images": [embedded, {"bytes": None, "path": "blue.png"}],
           "messages": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "And?"},
                                                     {"type": "image", "text": None}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "red, blue", "image": None}]}]}
    assert convert(trl, "messages") == [
        {"role": "user", "content": [{"type": "image", "image": inline(png("red"))}, {"type": "text", "text": "And?"},
                                     {"type": "image", "image": "blue.png"}]},
        {"role": "assistant", "content": "red, blue"}]
    picture = Image.new("CMYK", (8, 4), (0, 255, 255, 0))  # decoded, in a mode PNG cannot hold
    unsloth_style = {"messages": [{"role": "user", "content": [{"type": "image", "image": picture}]},
                                  {"role": "assistant", "content": "green"}]}
    stored = convert(unsloth_style, "messages")[0]["content"][0]["image"]
    assert Image.open(io.BytesIO(base64.b64decode(stored.partition(",")[2]))).getpixel((0, 0)) == (255, 0, 0)
    llava = {"image": embedded, "conversations": [{"from": "human", "value": "<image>Colour?"},
                                                  {"from": "gpt", "value": "red"}]}
    assert convert(llava, "sharegpt_vision")[0]["content"][0] == {"type": "image", "image": inline(png("red"))}


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
     "messages[0].content[0]: an image needs its path, a data URI or its bytes ({'bytes': ...}, as Hugging Face "
     'datasets embed one), like {"type": "image", "image": "picture.png"}; got dict \'{}\''),
    ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
                   {"role": "assistant", "content": "x"}], "images": ["a.png"]}, "messages",
     "2 image parts without a path but 1 images in the row's 'images'; give each image part its path or data URI, "
     'like {"type": "image", "image": "picture.png"}, or list the row\'s images in order in \'images\', one for each '
     "part without a path (rows whose text holds <image> markers are the sharegpt_vision format's)"),
    ({"messages": [{"role": "user", "content": "<image>Who is it?"}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]}, "messages",
     "0 image parts without a path but 1 images in the row's 'images'; give each image part its path or data URI, "
     'like {"type": "image", "image": "picture.png"}, or list the row\'s images in order in \'images\', one for each '
     "part without a path (rows whose text holds <image> markers are the sharegpt_vision format's)"),
    ({"image": 7, "question": "Colour?", "answer": "x"}, "vqa",
     "field 'image': an image needs its path, a data URI or its bytes ({'bytes': ...}, as Hugging Face datasets "
     'embed one), like {"type": "image", "image": "picture.png"}; got int \'7\''),
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
    names = lambda folder: sorted(p.name for p in (folder / "images").iterdir())
    assert names(tmp_path) == names(bundled)


# --- prepare: images ------------------------------------------------------------------------------------

def write_project(workdir, sources, dvc_deps=None, **data):
    """params.yaml of the vision default reading `sources` (and a dvc.yaml whose prepare stage depends on
    `dvc_deps`)."""
    workdir.write_params(sources, kind="vision", **data)
    if dvc_deps is not None:
        (workdir.path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "x", "deps": dvc_deps}}}))


def vqa_source(workdir, rows, **source):
    return {"path": workdir.write_jsonl("raw/vqa.jsonl", rows), "format": "vqa", **source}


def write_image(workdir, name, data: bytes) -> None:
    path = workdir.path / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def data_metrics(workdir) -> dict:
    return json.loads((workdir.path / DATA_METRICS).read_text())


def stored_images(train: list[dict]) -> list[str]:
    return [part["image"] for row in train for message in row["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image"]


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
    stored = sorted(stored_images(train))
    assert all(path.startswith(f"{PREPARED_DIR / IMAGES_SUBDIR}/") for path in stored)
    sizes = sorted(Image.open(workdir.path / path).size for path in stored)
    assert sizes == [(32, 48), (64, 64), (100, 50)]  # 200x100 scaled down to at most 5000 pixels
    assert "<|vision_start|><|image_pad|><|vision_end|>Colour?" in train[0]["text"]
    assert "image_sources" not in train[0]
    metrics = data_metrics(workdir)
    assert metrics["duplicates_removed"] == 1
    assert metrics["images"]["train"] == {"images": 3, "width_min": 32, "width_mean": 65.3, "width_max": 100,
                                          "height_min": 48, "height_mean": 54.0, "height_max": 64}
    assert metrics["tokens"]["train"]["max"] > 4  # image tokens counted


def test_prepare_reads_images_embedded_in_parquet_and_save_to_disk_datasets(workdir):
    """A Hugging Face vision dataset as a user has it: an Image column in a save_to_disk directory (read without
    decoding: the stored bytes, nothing written into the dataset's folder) and in a Parquet file."""
    import datasets

    jpegs = []
    for i, colour in enumerate(("red", "green", "blue")):
        buffer = io.BytesIO()
        Image.new("RGB", (40 + i, 32), colour).save(buffer, format="JPEG")
        jpegs.append(buffer.getvalue())
    pictures = [Image.open(io.BytesIO(data)) for data in jpegs]
    columns = {"image": pictures, "question": ["Colour?"] * 3, "answer": ["red", "green", "blue"]}
    dataset = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    dataset.save_to_disk(str(workdir.path / "raw/disk"))
    dataset.to_parquet(str(workdir.path / "raw/vqa.parquet"))
    trl = datasets.Dataset.from_dict({
        "images": [[picture] for picture in pictures],
        "messages": [[{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "And?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
                     for answer in columns["answer"]],
    }).cast_column("images", datasets.List(datasets.Image()))
    trl.save_to_disk(str(workdir.path / "raw/trl"))
    files = lambda: sorted(path.name for path in (workdir.path / "raw").rglob("*"))
    before = files()
    write_project(workdir, [{"path": "raw/disk", "format": "vqa"}, {"path": "raw/vqa.parquet", "format": "vqa"},
                            {"path": "raw/trl", "format": "messages"}],
                  dedupe=False, val_fraction=0.0, test_fraction=0.0)
    prepare.main()
    stored = stored_images(workdir.read_split("train"))
    assert len(stored) == 9 and len(set(stored)) == 3  # each picture stored once, by its content
    assert sorted((workdir.path / path).read_bytes() for path in set(stored)) == sorted(jpegs)  # as stored, not decoded
    assert files() == before  # no cache file written into the datasets' folders


def prepare_error(workdir) -> str:
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert not (workdir.path / PREPARED_DIR).exists()
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
    message = prepare_error(workdir)
    assert message.startswith(f"raw/vqa.jsonl:1: {problem}") and "on_error: skip" in message


def test_message_text_spelling_the_image_placeholder_is_a_row_error(workdir):
    """The processor would take a typed `<|image_pad|>` for a picture and fail the whole batch (in training, an
    error the data loader reads as the end of the epoch): prepare names the row first."""
    write_image(workdir, "red.png", png("red"))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "red.png", "question": "What does <|image_pad|> mean?", "answer": "a placeholder"}]
    write_project(workdir, [vqa_source(workdir, rows)])
    assert prepare_error(workdir).startswith(
        "raw/vqa.jsonl:2: a user message's text spells '<|image_pad|>', the model's image placeholder, which the "
        "processor would take for a picture; remove it from the text")


def test_bad_images_are_skipped_and_counted_with_on_error_skip(workdir):
    write_image(workdir, "red.png", png("red"))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "missing.png", "question": "Colour?", "answer": "blue"}]
    write_project(workdir, [vqa_source(workdir, rows, on_error="skip")])
    prepare.main()
    assert data_metrics(workdir)["rows_skipped"] == 1


def test_images_outside_prepare_deps_fail_even_with_on_error_skip(workdir):
    write_image(workdir, "red.png", png("red"))
    (workdir.path / "elsewhere").mkdir()
    (workdir.path / "elsewhere/blue.png").write_bytes(png("blue"))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "../elsewhere/blue.png", "question": "Colour?", "answer": "blue"}]
    write_project(workdir, [vqa_source(workdir, rows, on_error="skip")], dvc_deps=["raw"])
    message = prepare_error(workdir)
    assert message.startswith("raw/vqa.jsonl:2: image '../elsewhere/blue.png': raw/../elsewhere/blue.png is not under "
                              "a dependency of the prepare stage in dvc.yaml (raw)")


@pytest.mark.parametrize(("name", "size", "ratio"), [("wide.png", (2020, 10), "202"), ("tall.png", (10, 2010), "201")])
def test_an_image_beyond_the_processors_aspect_ratio_is_a_row_error_naming_it(workdir, name, size, ratio):
    """Qwen's image processor refuses images longer than 200:1 with a traceback naming no file; prepare refuses
    the row first, naming it and the image, and `on_error: skip` skips it. 200:1 itself is taken."""
    write_image(workdir, "red.png", png("red"))
    write_image(workdir, "exactly-200.png", png("red", (2000, 10)))  # exactly 200:1
    write_image(workdir, name, png("blue", size))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": name, "question": "Colour?", "answer": "blue"},
            {"image": "exactly-200.png", "question": "Colour?", "answer": "red"}]
    write_project(workdir, [vqa_source(workdir, rows)])
    message = prepare_error(workdir)
    assert message.startswith(f"raw/vqa.jsonl:2: image {name!r}: {size[0]}x{size[1]} has an aspect ratio of {ratio}:1, "
                              "above the 200:1 the model's image processor accepts; crop it, pad it towards a square "
                              "or cut it into tiles (vqa format). Fix the row, or set `on_error: skip`")
    write_project(workdir, [vqa_source(workdir, rows, on_error="skip")])
    prepare.main()
    assert len(workdir.read_split("train")) == 2 and data_metrics(workdir)["rows_skipped"] == 1


def test_the_aspect_ratio_is_checked_as_stored_after_scaling(workdir):
    path = saved(workdir.path / "strip.png", Image.new("RGB", (3980, 20), "red"))  # 199:1
    assert store_image(path, None, None).width == 3980
    with pytest.raises(RowError) as caught:
        store_image(path, None, 4000, "strip.png")  # scaled to 892x4: 223:1
    assert str(caught.value).startswith("image 'strip.png': 3980x20 (scaled to 892x4 by data.image_max_pixels) has "
                                        "an aspect ratio of 223:1, above the 200:1")


def test_the_aspect_ratio_limit_is_the_processors_own_where_it_has_one(processor, monkeypatch):
    import sys
    import types

    from slothline.kinds.vision.images import MAX_RATIO, aspect_ratio_limit

    assert aspect_ratio_limit(processor) == MAX_RATIO == 200  # Qwen's: a literal in transformers' smart_resize
    assert aspect_ratio_limit(types.SimpleNamespace(image_processor=types.SimpleNamespace(max_ratio=4))) == 4
    module = types.ModuleType("some_image_processing")
    module.MAX_RATIO = 50
    image_processor = type("SomeImageProcessor", (), {"__module__": module.__name__})()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert aspect_ratio_limit(types.SimpleNamespace(image_processor=image_processor)) == 50
    not_a_number = types.SimpleNamespace(image_processor=types.SimpleNamespace(max_ratio=True))
    assert aspect_ratio_limit(not_a_number) == 200


@pytest.mark.parametrize("path", ["family rule", "processor run"])
def test_a_processor_refusal_when_counting_image_tokens_names_the_image(workdir, monkeypatch, path):
    """Whatever the processor still refuses (here the aspect ratio, with the check before it lifted) fails
    prepare with the image, its size and the row's source named, not a library traceback."""
    from slothline.families import Family

    monkeypatch.setattr(vision, "aspect_ratio_limit", lambda processor: 1000, raising=False)
    if path == "processor run":  # a family without an image-token rule: the processor runs on blank images
        monkeypatch.setattr(vision, "family", lambda model_type: Family("vision"))
    write_image(workdir, "red.png", png("red"))
    write_image(workdir, "wide.png", png("blue", (2020, 10)))
    rows = [{"image": "red.png", "question": "Colour?", "answer": "red"},
            {"image": "wide.png", "question": "Colour?", "answer": "blue"}]
    write_project(workdir, [vqa_source(workdir, rows, on_error="skip")])
    message = prepare_error(workdir)
    assert message.startswith("image 'raw/wide.png' (2020x10) in a row of source 'vqa': the model's image processor "
                              "refuses it (ValueError: absolute aspect ratio must be smaller than 200, got 202.0); "
                              "crop, pad or resize the image to a shape the model takes, or drop the row"), message


def test_rows_longer_than_max_seq_length_leave_train(workdir):
    write_image(workdir, "big.png", png("red", (256, 256)))  # 64 image tokens
    write_image(workdir, "small.png", png("red"))  # 4
    rows = [{"image": "big.png", "question": "Colour?", "answer": "red"},
            {"image": "small.png", "question": "Colour?", "answer": "red"}]
    write_params(workdir.path, "vision", model={"max_seq_length": 40},
                 data={"sources": [vqa_source(workdir, rows)], "total": None, "val_fraction": 0.0,
                       "test_fraction": 0.0})
    prepare.main()
    assert len(workdir.read_split("train")) == 1
    assert data_metrics(workdir)["tokens"]["train"]["rows_dropped_too_long"] == 1


# --- images as a viewer shows them, on every path of store_image -------------------------------------------

def saved(path, picture: Image.Image, **options) -> str:
    picture.save(path, **options)
    return str(path)


def stored_picture(stored) -> Image.Image:
    picture = Image.open(io.BytesIO(stored.data))
    picture.load()
    return picture


def test_a_large_16_bit_grayscale_png_is_scaled_to_8_bits_not_white(workdir):
    gradient = np.linspace(0, 65535, 600 * 600).reshape(600, 600).astype(np.uint16)
    path = saved(workdir.path / "gray16.png", Image.fromarray(gradient))
    assert Image.open(path).mode.startswith("I")
    stored = store_image(path, None, 300 * 300)
    picture = stored_picture(stored)
    assert (stored.width, stored.height) == picture.size == (300, 300)  # the resize path
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float64)
    assert abs(pixels.mean() - gradient.mean() / 257) < 2  # ~127.5; clipped to white it would be ~255
    assert pixels.min() < 10 and pixels.max() > 245  # the gradient survives, dark to light


def test_a_large_jpeg_is_turned_upright_by_its_exif_orientation_before_scaling(workdir):
    raw = Image.new("RGB", (800, 400), "red")
    raw.paste(Image.new("RGB", (400, 400), "blue"), (400, 0))  # as stored: red left, blue right
    exif = raw.getexif()
    exif[ORIENTATION] = 6  # rotate 90 degrees clockwise to view: red on top, blue below
    path = saved(workdir.path / "rotated.jpg", raw, exif=exif)
    stored = store_image(path, None, 80_000)
    picture = stored_picture(stored)
    assert (stored.width, stored.height) == picture.size  # the recorded size is the stored file's
    assert picture.width < picture.height and picture.size == (200, 400)  # 400x800 upright, scaled by 1/2
    assert picture.getexif().get(ORIENTATION) in (None, 1)  # not turned a second time by a viewer
    top, bottom = picture.convert("RGB").getpixel((100, 50)), picture.convert("RGB").getpixel((100, 350))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_prepare_records_the_upright_size_of_a_rotated_jpeg(workdir):
    raw = Image.new("RGB", (800, 400), "red")
    exif = raw.getexif()
    exif[ORIENTATION] = 6
    (workdir.path / "raw").mkdir()
    saved(workdir.path / "raw/rotated.jpg", raw, exif=exif)
    rows = [{"image": "rotated.jpg", "question": "Colour?", "answer": "red"}]
    write_project(workdir, [vqa_source(workdir, rows)], image_max_pixels=80_000)
    prepare.main()
    [path] = stored_images(workdir.read_split("train"))
    width, height = Image.open(workdir.path / path).size
    assert (width, height) == (200, 400)
    images = data_metrics(workdir)["images"]["train"]
    assert (images["width_max"], images["height_max"]) == (width, height)


@pytest.mark.parametrize("max_pixels", [None, 300 * 300], ids=["as-is", "scaled"])
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB", "L"])
def test_transparent_pixels_are_composited_on_white(workdir, mode, max_pixels):
    options = {}
    if mode == "P":  # a palette whose colour 0 (black) is transparent, as GIFs and small PNGs have
        picture = Image.new("P", (600, 600), 0)
        picture.putpalette([0, 0, 0, 0, 0, 255])
        picture.paste(1, (300, 0, 600, 600))  # right half opaque blue
        options["transparency"] = 0
    elif mode in ("RGB", "L"):  # no alpha band: a PNG colour key (tRNS) makes black transparent
        picture = Image.new(mode, (600, 600), 0)
        picture.paste((0, 0, 255) if mode == "RGB" else 100, (300, 0, 600, 600))
        options["transparency"] = (0, 0, 0) if mode == "RGB" else 0
    else:
        picture = Image.new("RGBA", (600, 600), (0, 0, 0, 0))
        picture.paste(Image.new("RGBA", (300, 600), (0, 0, 255, 255)), (300, 0))  # right half opaque blue
        picture = picture.convert(mode)
    path = saved(workdir.path / "transparent.png", picture, **options)
    assert Image.open(path).mode == mode
    stored = store_image(path, None, max_pixels)
    result = stored_picture(stored).convert("RGB")
    assert result.size == (stored.width, stored.height) == ((600, 600) if max_pixels is None else (300, 300))
    assert result.getpixel((10, 10)) == (255, 255, 255)  # transparent: white, not black
    assert result.getpixel((result.width - 10, 10)) != (255, 255, 255)  # the opaque half is kept


@pytest.mark.parametrize("max_pixels", [None, 150 * 100], ids=["as-is", "scaled"])
def test_a_phone_style_mpo_jpeg_is_accepted_as_its_first_picture(workdir, max_pixels):
    first, second = Image.new("RGB", (300, 200), "red"), Image.new("RGB", (300, 200), "blue")
    path = saved(workdir.path / "phone.jpg", first, format="MPO", save_all=True, append_images=[second])
    assert Image.open(path).format == "MPO"
    stored = store_image(path, None, max_pixels)
    picture = stored_picture(stored)
    assert picture.size == (stored.width, stored.height) == ((300, 200) if max_pixels is None else (150, 100))
    red, green, blue = picture.convert("RGB").getpixel((10, 10))
    assert red > 200 > blue
    if max_pixels is None:  # already as a viewer shows it: the file is kept as it is
        assert stored.data == (workdir.path / "phone.jpg").read_bytes() and stored.name.endswith(".jpg")


def test_a_small_rgb_jpeg_keeps_its_own_bytes(workdir):
    import hashlib

    path = saved(workdir.path / "photo.jpg", Image.new("RGB", (120, 80), "orange"), quality=90)
    original = (workdir.path / "photo.jpg").read_bytes()
    for max_pixels in (None, 120 * 80, 262_144):
        stored = store_image(path, None, max_pixels)
        assert stored.data == original
        assert stored.name == hashlib.sha256(original).hexdigest()[:20] + ".jpg"
        assert (stored.width, stored.height) == (120, 80)


def test_images_load_as_a_viewer_shows_them(tmp_path):
    """16-bit grayscale (scientific and medical PNGs) is scaled to 8 bits, not clipped to white; a JPEG's
    EXIF orientation is applied."""
    gradient = np.linspace(13364, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    pixels = np.asarray(open_rgb(tmp_path / "gray16.png"))
    assert pixels.shape == (32, 32, 3) and pixels.min() == 13364 // 257 and pixels.max() == 255
    picture = Image.new("RGB", (120, 60), "red")
    exif = picture.getexif()
    exif[ORIENTATION] = 6  # orientation: rotate 90 degrees clockwise to view
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_rgb(tmp_path / "rotated.jpg").size == (60, 120)


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
    batch = AnswerCollator(processor, ("<|im_start|>user\n", "<|im_start|>assistant\n"), vision.load_images)(rows)
    tokenizer = processor.tokenizer
    trained = [tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
               for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert trained == ["red<|im_end|>", "red<|im_end|>RED<|im_end|>"]
    assert all(label in (-100, token) for token, label in zip(batch["input_ids"].flatten(), batch["labels"].flatten()))
    assert (batch["input_ids"] == processor.image_token_id).sum() == 8  # two 64x64 images, 4 tokens each
    assert batch["pixel_values"].shape[0] == 2 * 16  # 16 patches each
    everything = AnswerCollator(processor, None, vision.load_images)(rows)["labels"]
    assert (everything[batch["attention_mask"] == 1] == -100).sum() == 8  # only the image tokens


class EndOfTurn:
    """A tokenizer whose end of turn (EOS) is <eot>: all the answer mask asks of it before tokenizing."""

    eos_token = "<eot>"

    def convert_tokens_to_ids(self, token):
        return 9

    def decode(self, ids):
        return "<eot>"


def test_answers_stop_at_the_end_of_turn_or_the_next_marker():
    mask = AnswerMask(EndOfTurn(), ("<user>", "<assistant>"))
    text = "<user>5<eot><assistant>67<eot>4<assistant>8<user>9<assistant>x"  # the last answer is cut off
    assert [text[s:e] for s, e in mask.spans(text)] == ["67<eot>", "8", "x"]
    literal = text.index("<eot>", text.index("67"))  # an <eot> that message text spells is text
    assert [text[s:e] for s, e in mask.spans(text, [[literal, literal + 5]])] == ["67<eot>4", "8", "x"]


# --- model, LoRA, params -----------------------------------------------------------------------------------

def test_tiny_qwen3_vl_builds_deterministically(tmp_path):
    from transformers import AutoConfig

    from slothline.builtin import ensure_builtin

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


@pytest.fixture(scope="module")
def adapted_modules(tiny_qwen3_vl):
    """The modules LoRA adapts in the tiny Qwen3-VL under the given lora.finetune_* flags."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    def adapted(flags: dict) -> set[str]:
        params = load("vision", lora={"target_modules": ["q_proj", "down_proj", "qkv", "linear_fc1"], **flags})
        model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl)
        model = get_peft_model(model, LoraConfig(r=4, **vision.lora_extras(params, model)))
        return {name.removeprefix("base_model.model.model.") for name, module in model.named_modules()
                if hasattr(module, "lora_A")}

    return adapted


def test_finetune_flags_choose_towers_and_blocks_as_unsloth_does(adapted_modules):
    everything = adapted_modules({})
    assert {"visual.blocks.1.attn.qkv", "visual.blocks.0.mlp.linear_fc1", "language_model.layers.3.self_attn.q_proj",
            "language_model.layers.0.mlp.down_proj"} <= everything
    assert not any("merger" in name for name in everything)  # no attention or MLP tag: Unsloth leaves them out
    assert len(everything) == 2 * 2 + 4 * 2
    language = adapted_modules({"finetune_vision_layers": False})
    assert language == {name for name in everything if name.startswith("language_model.")}
    attention = adapted_modules({"finetune_mlp_modules": False})
    assert attention == {name for name in everything if "attn" in name}


def params_error(directory, kind, **sections) -> str:
    write_params(directory, kind, **sections)
    with pytest.raises(SlothlineError) as caught:
        load_params(directory / "params.yaml")
    return str(caught.value)


def test_finetune_flags_that_leave_nothing_to_train_are_refused(tmp_path):
    message = params_error(tmp_path, "vision", lora={"finetune_attention_modules": False, "finetune_mlp_modules": False})
    assert "lora: finetune_*: nothing left to train" in message


def test_packing_is_refused_for_vision(tmp_path):
    message = params_error(tmp_path, "vision", train={"packing": True})
    assert "train.packing: unknown parameter for vision models" in message


def test_finetune_flags_are_refused_for_text_models(tmp_path):
    message = params_error(tmp_path, "causal_lm", lora={"finetune_vision_layers": False})
    assert "lora.finetune_vision_layers: unknown parameter for causal_lm models" in message


# --- merge and export -----------------------------------------------------------------------------------

def test_merged_vision_model_loads_with_plain_transformers_and_matches_the_adapter(workdir, processor,
                                                                                   tiny_qwen3_vl):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stages import check_params, export, merge

    params = load("vision", lora={"target_modules": ["q_proj", "v_proj", "qkv", "linear_fc1"]})
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl)
    model = get_peft_model(model, LoraConfig(r=8, init_lora_weights=False, **vision.lora_extras(params, model)))
    tuned_dir = workdir.path / TUNED_DIR
    model.save_pretrained(tuned_dir)
    processor.save_pretrained(tuned_dir)
    Manifest(kind="vision", method="lora", base_model="builtin:tiny-qwen3-vl", revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=256).write(tuned_dir)
    write_params(workdir.path, "vision", export={"formats": []})
    merge.main()
    merged_dir = workdir.path / MERGED_DIR
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)  # no PEFT
    loaded = AutoProcessor.from_pretrained(merged_dir)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    inputs = loaded(text=[loaded.apply_chat_template(chat, add_generation_prompt=True)],
                    images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl), tuned_dir)
    with torch.no_grad():
        expected, got = tuned(**inputs).logits, merged(**inputs).logits
        with tuned.disable_adapter():
            untuned = tuned(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    assert not torch.allclose(untuned, expected, atol=1e-2)

    export.main()  # formats: [] writes nothing and succeeds
    assert json.loads((workdir.path / EXPORT_METRICS).read_text()) == {}
    write_params(workdir.path, "vision", export={"formats": ["gguf"], "gguf_quantization": ["f16"]})
    check_params.main()
    export.main()  # the language model's GGUF and the vision encoder's mmproj
    assert (workdir.path / EXPORT_DIR / "mmproj.gguf").is_file() and (workdir.path / EXPORT_DIR / "f16" / "model.gguf").is_file()
    assert json.loads((workdir.path / EXPORT_METRICS).read_text())["f16"]["architecture"] == "qwen3vl"
    write_params(workdir.path, "vision", export={"formats": ["gguf"]}, merge={"save_method": "lora"})
    with pytest.raises(SlothlineError) as caught:
        check_params.main()  # refused before anything runs
    assert str(caught.value).startswith("export.formats: gguf of a vision model needs merge.save_method: merged_16bit")


# --- the vision default, end to end ---------------------------------------------------------------------

@pytest.mark.e2e
def test_vision_default_learns_the_bundled_pictures(dvc_project, tmp_path):
    """`dvc exp run -S kind=vision`, as README says; each stage imports only code its deps name."""
    from tests.test_dvc_contract import check_import_closure, logging_imports

    started = time.monotonic()
    log = tmp_path / "imports.jsonl"
    output = dvc(dvc_project, "exp", "run", "-S", "kind=vision", env=logging_imports(log)).stdout
    check_import_closure(dvc_project, log, "vision")
    print(f"vision DAG: {time.monotonic() - started:.0f} s (load average {os.getloadavg()[0]:.1f})")
    assert ran_stages(output) == ["check_params", "prepare", "train", "preference", "evaluate", "merge", "export", "push"]
    assert yaml.safe_load((dvc_project / "params.yaml").read_text())["kind"] == "vision"
    data = json.loads((dvc_project / DATA_METRICS).read_text())
    assert data["images"]["train"]["images"] == data["train_rows"] > 300
    assert json.loads((dvc_project / TRAIN_METRICS).read_text())["kind"] == "vision"
    scores = json.loads((dvc_project / EVAL_METRICS).read_text())
    print(scores)
    assert scores["tuned"]["exact_match"] >= 50 and scores["base"]["exact_match"] <= 5
    assert scores["tuned"]["loss"] < scores["base"]["loss"]
    report = (dvc_project / REPORT_FILE).read_text()
    thumbnails = [line.split('src="')[1].split('"')[0] for line in report.splitlines() if "<img" in line]
    assert len(thumbnails) == 5 and all((dvc_project / REPORT_FILE.parent / path).is_file() for path in thumbnails)
    assert json.loads((dvc_project / EXPORT_METRICS).read_text()) == {}
    assert (dvc_project / MERGED_DIR / "model.safetensors").is_file()
    assert ran_stages(dvc(dvc_project, "exp", "run", "-S", "kind=vision").stdout) == []
    assert dvc(dvc_project, "status").stdout.strip() == "Data and pipelines are up to date."

    # llama.cpp's files for the tuned model: only export (and what follows it) runs again
    output = dvc(dvc_project, "exp", "run", "-S", "kind=vision", "-S", "export.formats=[gguf]").stdout
    assert ran_stages(output) == ["check_params", "export", "push"]
    exported = json.loads((dvc_project / EXPORT_METRICS).read_text())
    print(exported)
    assert sorted(exported) == ["f16", "q8_0"] and (dvc_project / EXPORT_DIR / "mmproj.gguf").is_file()
    if importlib.util.find_spec("llama_cpp"):
        assert exported["f16"]["image_check"] == "16 of 16 greedy tokens match transformers"
        assert exported["f16"]["generation_check"] == "16 of 16 greedy tokens match transformers"


def test_a_gpu_plan_counts_the_tokens_each_picture_expands_to(processor):
    """Prompt lengths order the batches and, on a GPU, size them by the token budget: there each picture counts
    as the processor expands it (tens to hundreds of tokens for one placeholder, by its size), on the CPU the
    text alone (the order every earlier release generated in). The family's image-token rule counts a picture
    from its size; for a family without one the processor runs on it."""
    from types import SimpleNamespace

    from slothline.kinds._generative.generation import prompt_lengths

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    pictures = [[Image.new("RGB", (448, 448), "red")], [Image.new("RGB", (224, 224), "red")]]
    on = lambda device, family="qwen3_vl": SimpleNamespace(device=SimpleNamespace(type=device),
                                                           config=SimpleNamespace(model_type=family))
    text = prompt_lengths(on("cpu"), processor, [prompt] * 2, images=pictures)
    expanded = prompt_lengths(on("cuda"), processor, [prompt] * 2, images=pictures)
    assert text[0] == text[1] == len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert expanded == [len(processor(text=[prompt], images=images)["input_ids"][0]) for images in pictures]
    assert expanded[0] > expanded[1] > text[1] + 10
    assert prompt_lengths(on("cuda", "a_family_without_a_rule"), processor, [prompt] * 2, images=pictures) == expanded
    assert prompt_lengths(on("cuda"), processor, [prompt] * 2, images=iter(pictures)) == expanded  # read row by row


def test_on_a_gpu_the_loss_batches_count_the_pictures_too(processor):
    """The longest whole text (prompt and reference answer) sizes evaluate's loss batches: on a GPU it counts each
    picture as the processor expands it, as generation's prompt lengths do (a 1024x768 picture is some 770 tokens
    where the text holds one placeholder: batches sized from the text alone would hold logits for 10x the rows
    that fit)."""
    from types import SimpleNamespace

    from slothline.kinds._generative import batch_lengths

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    rows = [{"prompt": prompt, "text": prompt + answer} for answer in ("red<|im_end|>\n", "a deep red<|im_end|>\n")]
    pictures = {prompt + "red<|im_end|>\n": [Image.new("RGB", (448, 448))],
                prompt + "a deep red<|im_end|>\n": [Image.new("RGB", (224, 224))]}
    images = lambda row: pictures[row["text"]]
    on = lambda device: SimpleNamespace(device=SimpleNamespace(type=device), config=SimpleNamespace(model_type="qwen3_vl"))
    expanded = lambda text, row: len(processor(text=[text], images=images(row))["input_ids"][0])

    prompts, longest = batch_lengths(on("cuda"), processor, rows, images)
    assert prompts == [expanded(prompt, row) for row in rows]
    assert longest == expanded(rows[0]["text"], rows[0]) > expanded(rows[1]["text"], rows[1])  # the big picture's row
    text_only = lambda text: len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert batch_lengths(on("cpu"), processor, rows, images) == ([text_only(prompt)] * 2, text_only(rows[1]["text"]))


def test_answers_read_each_batchs_pictures_as_the_batch_forms(tiny_qwen3_vl, processor, tmp_path, monkeypatch):
    """A test split of photos is never held in memory at once: generation reads a batch's pictures as it forms it."""
    from types import SimpleNamespace

    from transformers import AutoModelForImageTextToText

    from slothline.kinds._generative.params import GenerationEvaluate

    rows = []
    for i, colour in enumerate(("red", "green", "blue")):
        (tmp_path / f"{colour}.png").write_bytes(png(colour))
        question = [{"type": "image", "image": str(tmp_path / f"{colour}.png")}, {"type": "text", "text": "Colour?"}]
        messages = [{"role": "user", "content": question}]
        rows.append({"id": str(i), "messages": messages,
                     "prompt": processor.apply_chat_template(messages, add_generation_prompt=True)})
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl).eval()
    events = []
    monkeypatch.setattr(vision, "load_images", lambda row, read=vision.load_images: events.append("read") or read(row))
    monkeypatch.setattr(model, "generate", lambda *args, run=model.generate, **kwargs: events.append("generate")
                        or run(*args, **kwargs))
    params = SimpleNamespace(evaluate=GenerationEvaluate(batch_size=1, max_new_tokens=2, seed=0))
    assert len(vision.answers(model, processor, rows, params)) == 3
    assert events == ["read", "generate"] * 3


def test_pictures_decode_on_a_compiled_static_cache_as_on_a_dynamic_one(tiny_qwen3_vl, processor):
    """On a GPU, prompts with pictures take the text's path: a static cache, every batch one shape, the decode
    steps compiled (the pictures go in with the prefill, which runs uncompiled). Compiled here on the CPU
    (transformers compiles on CUDA alone unless told): once one batch has compiled, batches of differently sized
    pictures and a last batch filled up compile nothing more, and the answers are the dynamic cache's."""
    from dataclasses import replace

    from torch._dynamo.utils import counters
    from transformers import AutoModelForImageTextToText, CompileConfig

    from slothline.kinds._generative.generation import Plan, generate
    from slothline.kinds._generative.params import GenerationEvaluate

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl).eval()
    model.generation_config.compile_config = CompileConfig()
    model.generation_config.compile_config._compile_all_devices = True
    sizes = [64, 256, 96, 128, 200, 64, 160]
    pictures = [[Image.new("RGB", (size, size), ("red", "blue", "green")[i % 3])] for i, size in enumerate(sizes)]
    questions = [[{"type": "image"}, {"type": "text", "text": "Which colour " + "is it " * (i % 4 + 1)}] for i in range(len(sizes))]
    prompts = [processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
               for question in questions]
    settings = GenerationEvaluate(batch_size=3, max_new_tokens=10, seed=0)
    dynamic = Plan(3, "dynamic", 0, merged=False)  # a dynamic cache grows as it needs
    static = replace(dynamic, cache="static", cache_length=300)  # the pictures' tokens and the answers
    torch._dynamo.reset()
    counters.clear()
    try:
        answers = generate(model, processor, prompts, settings, images=pictures, how=dynamic)
        generate(model, processor, prompts[:3], settings, images=pictures[:3], how=static)  # one batch compiles
        graphs = counters["stats"]["unique_graphs"]
        assert generate(model, processor, prompts, settings, images=pictures, how=static) == answers and any(answers)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("lora, message", [
    ({"target_modules": None}, None),  # the family's default: the towers' and the language model's layers
    ({"finetune_vision_layers": False, "target_modules": ["qkv", "proj", "linear_fc1", "linear_fc2"]},
     "none of qkv, proj, linear_fc1, linear_fc2 lies in the parts the lora.finetune_\\* flags select"),
])
def test_lora_targets_are_checked_within_the_parts_the_flags_select(tiny_qwen3_vl, lora, message):
    """check_params builds the kind's targets as PEFT gets them (one regex within the towers and blocks the flags
    select): targets outside those parts are refused there, not by PEFT after prepare."""
    from slothline.backends.lora import check_target_names
    from slothline.kinds import vision
    from tests.conftest import load

    params = load("vision", model={"name": tiny_qwen3_vl}, lora=lora)
    if message is None:
        check_target_names(vision, params)
    else:
        with pytest.raises(SlothlineError, match=message):
            check_target_names(vision, params)


def test_a_vision_family_without_a_record_is_refused_before_prepare(workdir, tiny_qwen3_vl):
    """A Gemma 3 or Llava checkpoint passes the kind check (a vision_config) but its processor takes pictures
    otherwise: check_params names the families the kind trains."""
    from slothline import kinds

    model = workdir.path / "gemma3"
    shutil.copytree(tiny_qwen3_vl, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gemma3"}))
    write_params(workdir.path, "vision", model={"name": str(model)})
    with pytest.raises(SlothlineError, match=r"a gemma3 model; the vision kind trains .*\(qwen3_vl, qwen2_5_vl, qwen2_vl\)"):
        kinds.check(kinds.get("vision"), load_params(workdir.path / "params.yaml"))
