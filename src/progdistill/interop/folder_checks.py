"""Checks of a diffusers folder before and while it is loaded, so that a malformed or unsupported folder gives one
line naming the file and what is wrong instead of a traceback from deep inside diffusers.

- `check_import_layout(folder)`: refuses what import does not take (ControlNet models and pipelines, inpainting
  U-Nets, U-Nets with added conditions other than SDXL's, unknown model classes), naming the class or setting, and
  checks the types of the network's and the VAE's settings.
- `check_config_types(cls, config, path)`: each value of a model's config.json against the type its diffusers class
  declares for it (a string where a number belongs, a number where a list belongs).
- `load_model(cls, directory, what)`: `cls.from_pretrained` with both checks above, the weights compared with the
  config (missing, unexpected and mis-shaped tensors, read from the safetensors headers without loading them) when
  diffusers refuses them or leaves parameters unloaded.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path

from ..checkpoint import CheckpointError
from ..config import ConfigError

# Model classes import takes, by sub-folder.
IMPORTABLE = {"unet": ("UNet2DModel", "UNet2DConditionModel"),
              "transformer": ("SD3Transformer2DModel", "FluxTransformer2DModel")}


def _config(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}, not an object of settings")
    return value


def check_import_layout(folder: str | Path) -> None:
    """ConfigError for a folder whose model import does not take, naming the file and the reason; nothing for the
    layouts it does take (and for a folder that is not there: the importer says so)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    index = _config(folder / "model_index.json") or {}
    pipeline = index.get("_class_name")
    named = isinstance(pipeline, str) and "ControlNet" in pipeline
    if named or (folder / "controlnet").is_dir():
        what = f"model_index.json names {pipeline}" if named else "it holds controlnet/"
        raise ConfigError(f"{folder} is a ControlNet pipeline ({what}): import takes the base model's folder; a "
                          "ControlNet is an add-on progdistill does not distil")
    found = False
    for sub, classes in IMPORTABLE.items():
        path = folder / sub / "config.json"
        config = _config(path)
        if config is None:
            continue
        found = True
        name = config.get("_class_name")
        if name == "ControlNetModel":
            raise ConfigError(f"{path}: a ControlNetModel is an add-on to a Stable Diffusion U-Net, not a denoiser; "
                              "import the base model's folder")
        if name not in classes:
            raise ConfigError(f"{path}: model class {name!r} is not one import takes (unet/: "
                              f"{', '.join(IMPORTABLE['unet'])}; transformer/: {', '.join(IMPORTABLE['transformer'])})")
        if name == "UNet2DConditionModel":
            _check_text_unet(path, config)
        _check_types_of_class(name, config, path)
    if not found:
        raise ConfigError(f"{folder} holds neither unet/config.json nor transformer/config.json: not a diffusers "
                          "pipeline folder import takes")
    vae_path = folder / "vae" / "config.json"
    vae = _config(vae_path)
    if vae is not None:
        _check_types_of_class(vae.get("_class_name", "AutoencoderKL"), vae, vae_path)


def _check_types_of_class(name: str, config: dict, path: Path) -> None:
    import diffusers

    cls = getattr(diffusers, str(name), None)
    if not isinstance(cls, type):
        raise ConfigError(f"{path}: model class {name!r} is not one the installed diffusers has")
    check_config_types(cls, config, path)


def _check_text_unet(path: Path, config: dict) -> None:
    inputs, outputs = config.get("in_channels", 4), config.get("out_channels", 4)
    if inputs != outputs:
        raise ConfigError(f"{path}: in_channels {inputs} with out_channels {outputs} is an inpainting or "
                          "image-conditioned U-Net (latents, mask and masked image in); import takes text-to-image "
                          "U-Nets only")
    added = config.get("addition_embed_type")
    if added not in (None, "text_time") or config.get("class_embed_type") is not None:
        raise ConfigError(f"{path}: a U-Net with added conditions (addition_embed_type {added!r}, class_embed_type "
                          f"{config.get('class_embed_type')!r}) is not a layout import takes (SD 1.x/2.x: none; SDXL: "
                          "'text_time')")


# ------------------------------------------------------------------------------------------------- config types


def _matches(value, hint) -> bool:
    """Whether a JSON value can stand for type `hint` (lenient: what this cannot judge passes)."""
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, typing.Tuple, typing.List) or hint in (tuple, list):  # noqa: UP006
        if not isinstance(value, list):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(set(args)) == 1:  # tuple[int], tuple[int, ...], list[int]: every element of that type
            return all(_matches(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return all(_matches(v, a) for v, a in zip(value, args))
        return True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint) -> str:
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None")


def check_config_types(cls, config: dict, path: Path) -> None:
    """ConfigError naming the first setting of `config` (read from `path`) whose value is not of the type `cls`'s
    constructor declares for it."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - annotations this Python cannot evaluate: nothing to check against
        return
    params = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        if key.startswith("_") or key not in params or key not in hints:
            continue
        hint = hints[key]
        if value is None and params[key].default is None:
            continue
        if not _matches(value, hint):
            raise ConfigError(f"{path}: {key} is {json.dumps(value)}, but {cls.__name__} takes {_describe(hint)} "
                              "there")


# ------------------------------------------------------------------------------------------------- weights


def _weight_shapes(directory: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape from the safetensors files in `directory` (headers only; sharded files through their
    index); None where the weights are not safetensors."""
    from safetensors import safe_open

    index = next(iter(sorted(directory.glob("*.safetensors.index.json"))), None)
    if index is not None:
        files = sorted({directory / f for f in json.loads(index.read_text()).get("weight_map", {}).values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    shapes = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                shapes[key] = list(f.get_slice(key).get_shape())
    return shapes


def weights_mismatch(cls, config: dict, directory: Path) -> str | None:
    """What differs between the tensors `cls(**config)` has and those the safetensors weights in `directory` hold
    (None when they agree or cannot be read)."""
    import torch

    try:
        shapes = _weight_shapes(directory)
    except Exception:  # noqa: BLE001 - unreadable weights: the caller reports diffusers' own error
        return None
    if shapes is None:
        return None
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception:  # noqa: BLE001 - a config the class refuses is reported by the caller
        return None
    wanted = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in wanted if k not in shapes]
    unexpected = [k for k in shapes if k not in wanted]
    shaped = [k for k in wanted if k in shapes and wanted[k] != shapes[k]]
    if not (missing or unexpected or shaped):
        return None
    parts = []
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} tensor(s) of another shape (e.g. {k}: the config makes {wanted[k]}, the "
                     f"weights hold {shapes[k]})")
    if missing:
        parts.append(f"{len(missing)} tensor(s) the config needs are missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) the config has no place for (e.g. {unexpected[0]})")
    return "; ".join(parts)


def load_model(cls, directory: Path, what: str):
    """`cls.from_pretrained(directory)`, or one-line errors: ConfigError for a config of the wrong types,
    CheckpointError for weights that do not match their config or cannot be read."""
    path = directory / "config.json"
    config = _config(path)
    if config is None:
        raise ConfigError(f"{what}'s config not found: {path}")
    check_config_types(cls, config, path)
    mismatch = None
    try:
        model = cls.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, AssertionError) as e:
        mismatch = weights_mismatch(cls, config, directory)
        if mismatch is None:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"could not load the {what} weights in {directory}: {first}") from None
    else:
        if any(p.is_meta for p in model.state_dict().values()):
            mismatch = weights_mismatch(cls, config, directory) or "some of its tensors were not loaded"
    if mismatch is not None:
        raise CheckpointError(f"the {what} weights in {directory} do not match {path.name}: {mismatch}")
    return model
