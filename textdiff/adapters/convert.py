"""HF causal LM <-> `TextDiffModel`, and whole checkpoint directories (weights + tokenizer + [MASK]).

    model = from_hf(hf_model)                 # in memory, causal mode: same logits as hf_model
    hf_model = to_hf(model)                   # back (lossless)
    convert_checkpoint("smollm2", "runs/smollm2_textdiff")   # what `textdiff convert` does
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import Tensor
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from textdiff.adapters.base import ConversionError, RawConfig, hf_base_dict, map_tensors
from textdiff.adapters.registry import architecture_of, get_adapter
from textdiff.modeling import TextDiffConfig, TextDiffModel
from textdiff.modeling.checkpoint_io import (
    CheckpointError,
    check_checkpoint,
    load_model,
    load_safetensors,
    load_tokenizer,
    read_config,
)

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"


# ---------------------------------------------------------------------------------------------- models in memory
def from_hf(
    hf_model_or_config: PreTrainedModel | Any,
    state_dict: dict[str, Tensor] | None = None,
    *,
    source: str | None = None,
    attention_mode: str | None = None,
    consume_state_dict: bool = False,
) -> TextDiffModel:
    """Convert an HF causal LM (or its config + state dict) into a `TextDiffModel` with the same weights.

    An AR source comes out in `attention_mode` (default "causal": it computes the HF model's logits) with
    `logit_shift=True`: like the AR model, position i predicts token i + 1, which is how an adapted model keeps
    using its AR head (Dream / DiffuLLaMA). A released diffusion LM (LLaDA, LLaDA-MoE, Dream; its config is a
    `RawConfig` or the published config class) comes out as it was trained: bidirectional (by default), with its
    own logit shift and [MASK]. Its config records the HF config (`adapted_from`) for converting back.
    consume_state_dict: the model takes `state_dict`'s tensors as its own (no copy, no random init: what
    `convert_checkpoint` does with weights it read from files, so an 8B checkpoint needs its size in memory once).
    """
    if isinstance(hf_model_or_config, PreTrainedModel):
        hf_config = hf_model_or_config.config
        architecture = type(hf_model_or_config).__name__
        state_dict = hf_model_or_config.state_dict() if state_dict is None else state_dict
    else:
        hf_config = hf_model_or_config
        architecture = architecture_of(hf_config)
        if state_dict is None:
            raise ValueError("from_hf(config) needs the state_dict")
    adapter = get_adapter(architecture)
    if attention_mode is None:
        attention_mode = "bidirectional" if adapter.released_diffusion else "causal"
    config = TextDiffConfig(
        **{"logit_shift": True, **adapter.textdiff_config(hf_config)},
        attention_mode=attention_mode,
        adapted_from={"architecture": architecture, "source": source, "config": hf_base_dict(hf_config)},
    )
    adapter.check_state_dict(hf_config, state_dict)
    dtype = state_dict[_embedding_key(adapter, state_dict)].dtype
    if consume_state_dict and dtype.is_floating_point:
        # the tensors become the model's own: build it on the meta device (no 4-byte random init of 8B weights)
        with torch.device("meta"):
            model = TextDiffModel(config)
    else:
        model = TextDiffModel(config)
        if dtype.is_floating_point:
            model.to(dtype)

    source_tensors = adapter.normalise_keys(state_dict)
    target = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    hint = f" ({architecture}{' from ' + source if source else ''})"
    if config.tie_word_embeddings:
        del target["lm_head.weight"]  # the same tensor as embed_tokens.weight
        _check_tied(source_tensors, adapter.hf_embedding, hint)
        source_tensors = {k: v for k, v in source_tensors.items() if k != "lm_head.weight"}
    mapped = map_tensors(
        adapter.name_map(config.num_hidden_layers, config), source_tensors, target, direction="to_textdiff",
        ignore=adapter.ignored_tensors, source_name=f"{architecture} checkpoint", config_hint=hint,
    )
    if config.tie_word_embeddings:
        mapped["lm_head.weight"] = mapped["embed_tokens.weight"]
    if model.embed_tokens.weight.is_meta:
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()},
                              strict=True, assign=True)
        if config.tie_word_embeddings:
            model.tie_weights()
    else:
        model.load_state_dict(mapped, strict=True)
    return model.eval()


def to_hf_layout(model: TextDiffModel, architecture: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of `model` in the layout of a released diffusion LM whose class is not part
    of transformers (LLaDA, LLaDA-MoE, Dream: their `adapted_from` architecture by default): what
    `export_checkpoint` writes, loadable by the published modeling code."""
    cfg = model.config
    provenance = cfg.adapted_from or {}
    architecture = architecture or provenance.get("architecture")
    adapter = get_adapter(architecture or "")
    if not adapter.released_diffusion:
        raise ValueError(f"{architecture} is a transformers class: use to_hf (it builds the HF model)")
    base = provenance.get("config") if provenance.get("architecture") == architecture else None
    hf_config = adapter.hf_config(cfg, base)
    tensors = dict(model.state_dict())
    if cfg.tie_word_embeddings:
        del tensors["lm_head.weight"]
    rules = adapter.name_map(cfg.num_hidden_layers, cfg)
    target: dict[str, tuple[int, ...]] = {}  # the HF shapes the rules derive from the trunk's own
    for rule in rules:
        target.update(rule.hf_shapes({n: tuple(tensors[n].shape) for n in rule.td_names}))
    mapped = map_tensors(rules, tensors, target, direction="to_hf", source_name="textdiff model",
                         config_hint=f" (exporting to {architecture})")
    return hf_config, {name: t.contiguous() for name, t in mapped.items()}


def to_hf(model: TextDiffModel, architecture: str | None = None) -> PreTrainedModel:
    """The HF causal LM with the weights of `model` (its `adapted_from` architecture and config by default; a
    native textdiff trunk exports as `LlamaForCausalLM`). Raises if the HF class cannot express the trunk.
    Released diffusion LMs have no transformers class: `to_hf_layout` / `export_checkpoint` write their layout."""
    cfg = model.config
    provenance = cfg.adapted_from or {}
    architecture = architecture or provenance.get("architecture") or "LlamaForCausalLM"
    adapter = get_adapter(architecture)
    if adapter.released_diffusion:
        raise ValueError(f"{architecture} is not a transformers class (it ships its own modeling code): use "
                         "to_hf_layout(model) or export_checkpoint / `textdiff convert` to write its layout")
    base = provenance.get("config") if provenance.get("architecture") == architecture else None
    hf_config = adapter.hf_config(cfg, base)
    hf_model = getattr(transformers, architecture)(hf_config)
    hf_model.to(model.embed_tokens.weight.dtype)

    tensors = dict(model.state_dict())
    target = {name: tuple(t.shape) for name, t in hf_model.state_dict().items()}
    if cfg.tie_word_embeddings:
        del tensors["lm_head.weight"], target["lm_head.weight"]
    mapped = map_tensors(
        adapter.name_map(cfg.num_hidden_layers, cfg), tensors, target, direction="to_hf",
        source_name="textdiff model", config_hint=f" (exporting to {architecture})",
    )
    if cfg.tie_word_embeddings:
        mapped["lm_head.weight"] = mapped[adapter.hf_embedding]
    hf_model.load_state_dict(mapped, strict=True)
    return hf_model.eval()


def _embedding_key(adapter, state_dict: dict[str, Tensor]) -> str:
    keys = [adapter.hf_embedding, adapter.hf_embedding.split(".", 1)[1]]
    for key in keys:
        if key in state_dict:
            return key
    raise ConversionError(f"checkpoint has no input embedding {adapter.hf_embedding!r}")


def _check_tied(tensors: dict[str, Tensor], embedding: str, hint: str) -> None:
    head, embed = tensors.get("lm_head.weight"), tensors[embedding]
    if head is None or head.data_ptr() == embed.data_ptr():
        return
    if head.shape != embed.shape or not torch.equal(head, embed):
        raise ConversionError(
            f"config says tie_word_embeddings=True but lm_head.weight differs from {embedding}{hint}; "
            "set tie_word_embeddings=false in config.json if the head is separate"
        )


# ---------------------------------------------------------------------------------------------- [MASK]
def add_mask_token(model: TextDiffModel, tokenizer) -> int:
    """Give the tokenizer a [MASK] (if it has no mask token) and the model a row for it; returns its id.

    A new id beyond the embedding grows it (and an untied head) by one row. The new row is the mean of the
    existing token rows: a neutral input that no real token claims, which keeps the converted model's logits
    for every other token unchanged.
    """
    from textdiff.data.tokenizers import ensure_mask_token

    had_mask = tokenizer.mask_token is not None and tokenizer.mask_token_id is not None
    mask_id = ensure_mask_token(tokenizer)
    if not had_mask:
        old_rows = min(mask_id, model.config.vocab_size)
        if mask_id >= model.config.vocab_size:
            model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
        with torch.no_grad():
            embed = model.get_input_embeddings().weight
            embed[mask_id] = embed[:old_rows].mean(dim=0)
            head = model.get_output_embeddings().weight
            if head.data_ptr() != embed.data_ptr():
                head[mask_id] = head[:old_rows].mean(dim=0)
    model.config.mask_token_id = mask_id
    return mask_id


def use_released_mask_token(model: TextDiffModel, tokenizer, adapter) -> int:
    """A released diffusion LM was trained with its own [MASK] (`adapter.mask_token`, e.g. LLaDA's <|mdm_mask|>
    at 126336): the tokenizer must have it at the model's mask id (no row is added); it becomes the tokenizer's
    mask_token. Its end-of-turn token (`adapter.eot_token`) is recorded as `config.eot_token_id` when present."""
    token, vocab = adapter.mask_token, tokenizer.get_vocab()
    arch = adapter.architecture
    if token not in vocab:
        raise ConversionError(
            f"the tokenizer has no {token!r}, the [MASK] token {arch} was trained with"
            + (f" (id {model.config.mask_token_id})" if model.config.mask_token_id is not None else "")
            + "; convert the checkpoint with its own tokenizer files"
        )
    mask_id = vocab[token]
    if model.config.mask_token_id is not None and model.config.mask_token_id != mask_id:
        raise ConversionError(f"config.json says mask_token_id={model.config.mask_token_id} but the tokenizer has "
                              f"{token!r} at id {mask_id}")
    if mask_id >= model.config.vocab_size:
        raise ConversionError(f"the tokenizer has {token!r} at id {mask_id}, outside the model's "
                              f"{model.config.vocab_size} embedding rows")
    tokenizer.mask_token = token
    model.config.mask_token_id = mask_id
    eot = getattr(adapter, "eot_token", None)
    if eot in vocab and vocab[eot] < model.config.vocab_size:
        model.config.eot_token_id = vocab[eot]
    return mask_id


# ---------------------------------------------------------------------------------------------- directories
def load_hf_dir(path: str | Path) -> tuple[Any, dict[str, Tensor], Any]:
    """(config, state dict, tokenizer) of an HF model directory: config.json + safetensors (or a weights-only
    torch .bin), possibly sharded. The architecture is checked before any weight is read."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an HF model directory (no config.json); pass a directory or 'smollm2'")
    raw = read_config(path, what="HF model directory")
    if raw.get("model_type") == "textdiff":
        raise ConversionError(f"{path} is already a textdiff checkpoint; use it directly (e.g. model.init_from)")
    adapter = get_adapter(architecture_of(_Namespace(raw)))  # fail fast on unsupported architectures
    if adapter.released_diffusion:  # its config class is the checkpoint's own code: read the file, run nothing
        config = RawConfig(raw, adapter.config_defaults)
        generation = path / "generation_config.json"
        if generation.is_file():
            try:
                config.generation_config = json.loads(generation.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{generation} is not valid JSON ({err})") from None
    else:
        config = AutoConfig.from_pretrained(str(path))
    state_dict = _read_weights(path)
    try:  # never the checkpoint's own code (nor a prompt asking whether to run it)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        tokenizer = _fast_tokenizer(path) if adapter.released_diffusion else None
        if tokenizer is None:
            raise ConversionError(
                f"{path} has no loadable tokenizer ({err}); copy the model's tokenizer files into it: textdiff "
                "carries the tokenizer over and adds [MASK]"
            ) from None
    return config, state_dict, tokenizer


def _fast_tokenizer(path: Path):
    """A released model's tokenizer whose class is its own code (Dream's `DreamTokenizer`): the same vocabulary
    from tokenizer.json through the generic fast tokenizer, or None without one."""
    from transformers import PreTrainedTokenizerFast

    if not (path / "tokenizer.json").is_file():
        return None
    options = {}
    config_file = path / "tokenizer_config.json"
    if config_file.is_file():
        tokenizer_config = json.loads(config_file.read_text())
        for key in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token", "chat_template"):
            value = tokenizer_config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None:
                options[key] = value
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **options)


class _Namespace:
    def __init__(self, data: dict):
        self.__dict__.update(data)


def _read_weights(path: Path) -> dict[str, Tensor]:
    def load_file(file: str) -> dict[str, Tensor]:
        return load_safetensors(file, what=f"HF model directory {path}")

    for index_name, loader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", _load_bin)):
        if (path / index_name).is_file():
            try:
                shards = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(f"{path / index_name} is not a weight index ({err})") from None
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(loader(str(path / shard)))
            return state
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").is_file():
        return _load_bin(str(path / "pytorch_model.bin"))
    raise FileNotFoundError(f"{path} holds no model.safetensors or pytorch_model.bin (sharded or not)")


def _load_bin(file: str) -> dict[str, Tensor]:
    import pickle

    try:
        return torch.load(file, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
        raise CheckpointError(f"{file} is not a readable weights-only torch file, truncated or corrupt "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def load_source(source: str) -> tuple[Any, dict[str, Tensor], Any, str, PreTrainedModel | None]:
    """(hf config, state dict, tokenizer, source id, hf model if one was built) of "smollm2" or an HF dir."""
    if source == SMOLLM2:
        from textdiff.adapters.smollm2 import load_smollm2, smollm2_source_id

        hf_model, tokenizer = load_smollm2()
        return hf_model.config, hf_model.state_dict(), tokenizer, smollm2_source_id(), hf_model
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--from {source!r}: no such directory (pass an HF model directory or 'smollm2')")
    config, state_dict, tokenizer = load_hf_dir(path)
    return config, state_dict, tokenizer, str(path.resolve()), None


@dataclass
class Conversion:
    """What `convert_checkpoint` wrote."""

    path: Path
    model: TextDiffModel
    tokenizer: Any
    max_logit_diff: float | None = None
    """max |causal-mode logits - HF logits| on a random batch, when verified (before [MASK] was added)."""


def convert_checkpoint(source: str, out_dir: str | Path, *, attention_mode: str | None = None,
                       overwrite: bool = False, verify: bool = False) -> Conversion:
    """Convert "smollm2" or an HF causal-LM directory into a textdiff checkpoint directory that
    `AutoModel.from_pretrained` and `AutoTokenizer.from_pretrained` load (after `import textdiff`): weights,
    config (with provenance), the tokenizer with its chat template and a [MASK]. Written atomically.
    verify: also run the HF class on the original weights and report the largest logit difference."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --force (overwrite=True) to replace it")
    hf_config, state_dict, tokenizer, source_id, hf_model = load_source(source)
    model = from_hf(hf_config, state_dict, source=source_id, attention_mode=attention_mode,
                    consume_state_dict=hf_model is None)
    adapter = get_adapter(model.config.adapted_from["architecture"])
    if getattr(hf_config, "generation_config", None) is not None and adapter.released_diffusion:
        model.config.adapted_from["generation_config"] = hf_config.generation_config  # Dream: alg, steps, ...
    diff = None
    if verify and adapter.released_diffusion:
        raise ValueError(f"--verify runs the HF class on the original weights, and {adapter.architecture} is not a "
                         "transformers class; its parity with the published modeling code is what "
                         "tests/test_released_models.py checks")
    if verify:
        if hf_model is None:  # an independent implementation: the HF class itself, with the original weights
            architecture = model.config.adapted_from["architecture"]
            hf_model = getattr(transformers, architecture)(hf_config)
            missing, _ = hf_model.load_state_dict(get_adapter(architecture).normalise_keys(state_dict), strict=False)
            if [k for k in missing if k != "lm_head.weight"]:
                raise ConversionError(f"cannot verify: {architecture} lacks {missing[:3]} in the checkpoint")
            hf_model.tie_weights()
        ids = torch.randint(0, hf_config.vocab_size, (2, min(64, model.config.max_position_embeddings)),
                            generator=torch.Generator().manual_seed(0))
        diff = max_logit_difference(model, hf_model.eval(), ids)
    del state_dict, hf_model
    if adapter.released_diffusion:
        use_released_mask_token(model, tokenizer, adapter)
    else:
        add_mask_token(model, tokenizer)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    save_checkpoint(model, tokenizer, out)
    return Conversion(out, model, tokenizer, diff)


def save_checkpoint(model: PreTrainedModel, tokenizer, out: Path) -> None:
    """model + tokenizer into a staging directory, then one rename: a crash never leaves half a checkpoint."""
    staged = out.with_name(out.name + ".tmp")
    if staged.exists():
        shutil.rmtree(staged)
    model.save_pretrained(str(staged))
    tokenizer.save_pretrained(str(staged))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, out)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, architecture: str | None = None,
                      overwrite: bool = False) -> tuple[Path, PreTrainedModel | str]:
    """A textdiff checkpoint directory -> an HF causal-LM directory (weights + tokenizer), or for a released
    diffusion LM its own layout (config.json + model.safetensors + tokenizer; returns its architecture name)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --force (overwrite=True) to replace it")
    model = load_model(checkpoint)
    target = architecture or (model.config.adapted_from or {}).get("architecture") or "LlamaForCausalLM"
    if get_adapter(target).released_diffusion:  # no transformers class: write its config.json + weights
        hf_config, tensors = to_hf_layout(model, target)
        staged = out.with_name(out.name + ".tmp")
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir(parents=True)
        (staged / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(tensors, str(staged / "model.safetensors"), metadata={"format": "pt"})
        load_tokenizer(checkpoint).save_pretrained(str(staged))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
        return out, target
    hf_model = to_hf(model, architecture)
    save_checkpoint(hf_model, load_tokenizer(checkpoint), out)
    return out, hf_model


def is_textdiff_checkpoint(path: str | Path) -> bool:
    """A directory whose config.json says model_type "textdiff" (an unreadable config.json is a CheckpointError)."""
    return (Path(path) / "config.json").is_file() and read_config(path).get("model_type") == "textdiff"


def ensure_textdiff_checkpoint(spec: str, cache_dir: str | Path) -> Path:
    """`model.init_from` resolution: a textdiff checkpoint is used as it is; "smollm2" or an HF causal-LM
    directory is converted once into `cache_dir` (reused while it records the same source)."""
    if spec != SMOLLM2 and is_textdiff_checkpoint(spec):
        check_checkpoint(spec, what="model.init_from")  # weights present and intact, before any data is loaded
        return Path(spec)
    if spec != SMOLLM2 and not Path(spec).is_dir():
        raise FileNotFoundError(
            f"model.init_from={spec!r} is neither a checkpoint directory nor 'smollm2'"
        )
    cache = Path(cache_dir)
    wanted = _source_id(spec)
    if is_textdiff_checkpoint(cache):
        recorded = (json.loads((cache / "config.json").read_text()).get("adapted_from") or {}).get("source")
        if recorded == wanted:
            logger.info("reusing the converted checkpoint %s of %s", cache, spec)
            return cache
    logger.info("converting %s into %s", spec, cache)
    convert_checkpoint(spec, cache, overwrite=True)
    return cache


def _source_id(spec: str) -> str:
    if spec == SMOLLM2:
        from textdiff.adapters.smollm2 import smollm2_source_id

        return smollm2_source_id()
    return str(Path(spec).expanduser().resolve())


@torch.no_grad()
def max_logit_difference(model: TextDiffModel, hf_model: PreTrainedModel, input_ids: Tensor) -> float:
    """max |logits(model in causal mode) - logits(hf_model)| on input_ids [B, L] (the vocab the HF model has)."""
    ours = model(input_ids, attention_mode="causal").logits  # [B, L, V(+1)]
    theirs = hf_model(input_ids).logits  # [B, L, V]
    return float((ours[..., : theirs.shape[-1]].float() - theirs.float()).abs().max())
