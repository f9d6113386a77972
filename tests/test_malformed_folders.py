"""Malformed or unsupported diffusers folders given to `progdistill import-diffusers`: one line naming the file and
what is wrong, exit code 2, no traceback, nothing written (issue 32, item 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from progdistill.cli import main
from progdistill.interop.tiny_sd import build_tiny_sd_folder, write_captioned_folder


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    folder = build_tiny_sd_folder(root / "sd")
    rng = np.random.default_rng(0)
    write_captioned_folder(root / "captions", rng.integers(0, 256, (4, 16, 16), dtype=np.uint8),
                           ["a photo of a shirt"] * 4)
    return {"folder": folder, "captions": root / "captions"}


def _edit_config(folder: Path, sub: str, **changes) -> Path:
    path = folder / sub / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return path


def _edit_weights(folder: Path, edit) -> Path:
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)
    return path


def _wider_conv_in(state):
    state["conv_in.weight"] = state["conv_in.weight"].repeat(2, 1, 1, 1)


CASES = {
    # name: (how the good folder is changed, what the one line must say)
    "wrong type in the U-Net's config": (lambda f: _edit_config(f, "unet", layers_per_block="two"),
                                         ["unet/config.json", "layers_per_block", '"two"', "int"]),
    "a number where a list belongs": (lambda f: _edit_config(f, "unet", block_out_channels=32),
                                      ["unet/config.json", "block_out_channels", "tuple"]),
    "wrong type in the VAE's config": (lambda f: _edit_config(f, "vae", latent_channels="four"),
                                       ["vae/config.json", "latent_channels", "AutoencoderKL"]),
    "weights of another width": (lambda f: _edit_weights(f, _wider_conv_in),
                                 ["unet", "do not match config.json", "conv_in.weight", "[8, 4, 3, 3]",
                                  "[16, 4, 3, 3]"]),
    "weights lacking a tensor": (lambda f: _edit_weights(f, lambda s: s.pop("conv_out.bias")),
                                 ["unet", "do not match config.json", "missing", "conv_out.bias"]),
    "config of another model": (lambda f: _edit_config(f, "unet", block_out_channels=[16, 32]),
                                ["unet", "do not match config.json", "another shape"]),
    "inpainting U-Net": (lambda f: _edit_config(f, "unet", in_channels=9),
                         ["unet/config.json", "in_channels 9", "inpainting"]),
    "ControlNet model": (lambda f: _edit_config(f, "unet", _class_name="ControlNetModel"),
                         ["unet/config.json", "ControlNetModel"]),
    "ControlNet pipeline": (lambda f: (f / "controlnet").mkdir(), ["ControlNet pipeline", "controlnet/"]),
    "unknown model class": (lambda f: _edit_config(f, "unet", _class_name="MyUNet"),
                            ["unet/config.json", "'MyUNet'", "UNet2DConditionModel"]),
    "added image conditions": (lambda f: _edit_config(f, "unet", addition_embed_type="text_image"),
                               ["unet/config.json", "addition_embed_type 'text_image'"]),
    "SDXL U-Net without its second text encoder": (
        lambda f: _edit_config(f, "unet", addition_embed_type="text_time", addition_time_embed_dim=8,
                               projection_class_embeddings_input_dim=80),
        ["lacks text_encoder_2/, tokenizer_2/", "an SDXL folder"]),
    "config not JSON": (lambda f: (f / "unet" / "config.json").write_text("{not json"),
                        ["unet/config.json", "not valid JSON"]),
    "config a list": (lambda f: (f / "unet" / "config.json").write_text("[1, 2]"),
                      ["unet/config.json", "JSON list"]),
    "no network": (lambda f: shutil.rmtree(f / "unet"), ["neither unet/config.json nor transformer/config.json"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_folder_gives_one_line_naming_it(good, case, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(good["folder"], folder)
    edit, expected = CASES[case]
    edit(folder)
    out = tmp_path / "run"
    code = main(["import-diffusers", "--model", str(folder), "--captions", str(good["captions"]), "--out", str(out),
                 "--set", "data.workers=0"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("progdistill: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(part in lines[0] for part in expected), lines[0]
    assert not (out / "teacher.json").exists()


def test_the_good_folder_imports(good, tmp_path, capsys):
    """The unedited folder passes the same checks (so the refusals above are the edits')."""
    assert main(["import-diffusers", "--model", str(good["folder"]), "--captions", str(good["captions"]), "--out",
                 str(tmp_path / "run"), "--set", "data.workers=0"]) == 0
    assert (tmp_path / "run" / "teacher.json").exists()
