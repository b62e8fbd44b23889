"""Opening a checkpoint directory with errors that name the path: the one place `train model.init_from=`,
`textdiff sample` and `textdiff convert --from` load weights through.

    config = check_checkpoint("runs/x/final")          # a dict; raises before any weight is read
    model = load_model("runs/x/final", what="model.init_from")
    tokenizer = load_tokenizer("runs/x/final")

A missing directory is a FileNotFoundError; a directory that is not a textdiff checkpoint, has no weights, or whose
config.json / safetensors file is truncated or corrupt is a `CheckpointError` (a ValueError). Safetensors headers
are parsed (and the data length checked against them) before torch sees the file, so a truncated copy fails here
with its path, not deep inside `from_pretrained`. Only safetensors or weights-only torch files are ever read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

TEXTDIFF_MODEL_TYPES = ("textdiff", "textdiff_dit", "textdiff_planner")
"""`model_type` of the checkpoints textdiff writes (the text trunk, the image / video DiT, the latent planner)."""
SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory that is not a textdiff checkpoint, lacks weights, or holds a corrupt file."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_config(path: str | Path, *, what: str = "checkpoint") -> dict[str, Any]:
    """config.json of the checkpoint directory `path` as a dict (what the user called it: `what`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{what} {path} is a file; expected a checkpoint directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{what} {path} is not a checkpoint directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{what} {config_file} is not valid JSON (line {err.lineno}: {err.msg}): "
                              "truncated or corrupt?") from None
    except (UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{what} {config_file} cannot be read: {_first_line(err)}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{what} {config_file} holds a JSON {type(config).__name__}, not a model config")
    return config


def safetensors_files(path: str | Path, *, what: str = "checkpoint") -> list[Path]:
    """The safetensors files of a checkpoint directory (the shards its index names, or model.safetensors)."""
    path = Path(path)
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [path / shard for shard in sorted(set(weight_map.values()))]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{what} {index} is not a safetensors index ({_first_line(err)})") from None
    single = path / "model.safetensors"
    return [single] if single.is_file() else []


def check_safetensors(file: str | Path, *, what: str = "checkpoint") -> None:
    """Raise CheckpointError unless `file` has a parseable header and exactly the data its header describes."""
    from safetensors import SafetensorError, safe_open

    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{what}: weight file {file} is missing")
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{what}: {file} is not a readable safetensors file, truncated or corrupt "
                              f"({_first_line(err)})") from None


def load_safetensors(file: str | Path, *, what: str = "checkpoint") -> dict[str, Tensor]:
    """The tensors of one safetensors file, after `check_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(file, what=what)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{what}: cannot read {file} ({_first_line(err)})") from None


def check_checkpoint(path: str | Path, *, what: str = "checkpoint",
                     model_types: tuple[str, ...] = TEXTDIFF_MODEL_TYPES) -> dict[str, Any]:
    """Raise unless `path` is a textdiff checkpoint directory whose weights are all there and intact; returns its
    config.json. Reads only headers: cheap enough to run before any data is loaded."""
    path = Path(path)
    config = read_config(path, what=what)
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise CheckpointError(f"{what} {path} holds a {model_type!r} model, not a textdiff checkpoint "
                              f"(config.json model_type: {', '.join(model_types)})")
    files = safetensors_files(path, what=what)
    if not files and not (path / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{what} {path} holds no weights (no model.safetensors): an interrupted save?")
    for file in files:
        check_safetensors(file, what=what)
    return config


def load_model(path: str | Path, *, what: str = "checkpoint"):
    """`AutoModel.from_pretrained(path)` of a checked textdiff checkpoint; loading errors name the path."""
    from safetensors import SafetensorError
    from transformers import AutoModel

    check_checkpoint(path, what=what)
    try:
        return AutoModel.from_pretrained(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        # e.g. a config.json whose sizes do not match the weights
        raise CheckpointError(f"cannot load {what} {path}: {_first_line(err)}") from None


def load_tokenizer(path: str | Path, *, what: str = "checkpoint"):
    """`AutoTokenizer.from_pretrained(path)`; a directory without a loadable tokenizer is a CheckpointError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{what} {path} has no loadable tokenizer: tokenizer files missing or corrupt "
                              f"({_first_line(err)})") from None


FAMILY_CONFIG_KEY = "textdiff_family"
"""key of the checkpoint config (config.json) that records the family a model was trained as."""


def family_of_checkpoint(config) -> str:
    """The family a saved model belongs to (`config`: a PretrainedConfig or its config.json as a dict): recorded in
    it, or (checkpoints saved before families were recorded) read from the model type and attention mode."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    if get(FAMILY_CONFIG_KEY):
        return get(FAMILY_CONFIG_KEY)
    if get("model_type") == "textdiff_dit":
        return "flow"
    return "ar" if get("attention_mode") == "causal" else "masked"
