"""Checkpoint name maps: one rule per HF tensor (or fused group), each with a shape assert, in both directions.

An `ArchitectureAdapter` says three things about one HF causal-LM family and nothing else: how its config maps
to `TextDiffConfig` fields (and back), and which HF tensor becomes which trunk tensor (`name_map`). The
generic `map_tensors` applies a name map in either direction, checks every source tensor's shape against the
shape the target config implies before touching it, and refuses leftovers and gaps. No HF forward code is used:
parity with HF is proven by tests, not by sharing code.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

Shape = tuple[int, ...]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as it is (shapes that do not match its config, missing tensors)."""


class UnsupportedArchitectureError(ConversionError):
    """An HF architecture (or an option of a supported one) that textdiff has no name map for."""


class MissingDependencyError(ImportError):
    """An optional package a converter source needs is not installed."""


# ---------------------------------------------------------------------------------------------- rules
class TensorRule(ABC):
    """Maps HF tensors `hf_names` <-> trunk tensors `td_names`."""

    @property
    @abstractmethod
    def hf_names(self) -> tuple[str, ...]: ...

    @property
    @abstractmethod
    def td_names(self) -> tuple[str, ...]: ...

    @abstractmethod
    def hf_shapes(self, td_shapes: dict[str, Shape]) -> dict[str, Shape]:
        """Shapes the HF tensors must have, given the shapes of the trunk tensors."""

    @abstractmethod
    def td_shapes(self, hf_shapes: dict[str, Shape]) -> dict[str, Shape]:
        """Shapes the trunk tensors must have, given the shapes of the HF tensors."""

    @abstractmethod
    def to_textdiff(self, hf: dict[str, Tensor]) -> dict[str, Tensor]: ...

    @abstractmethod
    def to_hf(self, td: dict[str, Tensor]) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class Same(TensorRule):
    """Same layout, new name."""

    hf: str
    td: str

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf,)

    @property
    def td_names(self) -> tuple[str, ...]:
        return (self.td,)

    def hf_shapes(self, td_shapes: dict[str, Shape]) -> dict[str, Shape]:
        return {self.hf: td_shapes[self.td]}

    def td_shapes(self, hf_shapes: dict[str, Shape]) -> dict[str, Shape]:
        return {self.td: hf_shapes[self.hf]}

    def to_textdiff(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.td: hf[self.hf]}

    def to_hf(self, td: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.hf: td[self.td]}


@dataclass(frozen=True)
class Transposed(TensorRule):
    """GPT-2 `Conv1D` weight [in, out] <-> `nn.Linear` weight [out, in]."""

    hf: str
    td: str

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf,)

    @property
    def td_names(self) -> tuple[str, ...]:
        return (self.td,)

    def hf_shapes(self, td_shapes: dict[str, Shape]) -> dict[str, Shape]:
        return {self.hf: tuple(reversed(td_shapes[self.td]))}

    def td_shapes(self, hf_shapes: dict[str, Shape]) -> dict[str, Shape]:
        return {self.td: tuple(reversed(hf_shapes[self.hf]))}

    def to_textdiff(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.td: hf[self.hf].t().contiguous()}

    def to_hf(self, td: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.hf: td[self.td].t().contiguous()}


@dataclass(frozen=True)
class Fused(TensorRule):
    """One HF tensor that concatenates several trunk tensors along the output dimension (GPT-2 `c_attn` =
    [q | k | v]); `conv1d`: the HF weight is stored [in, out] and the parts are split along its last dim."""

    hf: str
    td: tuple[str, ...]
    conv1d: bool = False

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf,)

    @property
    def td_names(self) -> tuple[str, ...]:
        return self.td

    def hf_shapes(self, td_shapes: dict[str, Shape]) -> dict[str, Shape]:
        parts = [td_shapes[n] for n in self.td]
        fused = (sum(p[0] for p in parts), *parts[0][1:])  # [out_q + out_k + out_v, (in)]
        return {self.hf: tuple(reversed(fused)) if self.conv1d else fused}

    def td_shapes(self, hf_shapes: dict[str, Shape]) -> dict[str, Shape]:
        fused = hf_shapes[self.hf]
        fused = tuple(reversed(fused)) if self.conv1d else fused  # [out_total, (in)]
        n = len(self.td)
        if fused[0] % n:
            raise ConversionError(f"{self.hf} of shape {hf_shapes[self.hf]} cannot be split into {n} equal parts")
        return {name: (fused[0] // n, *fused[1:]) for name in self.td}

    def to_textdiff(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        tensor = hf[self.hf]
        if self.conv1d:
            tensor = tensor.t()  # [out, in]
        return {name: part.contiguous() for name, part in zip(self.td, tensor.chunk(len(self.td), dim=0))}

    def to_hf(self, td: dict[str, Tensor]) -> dict[str, Tensor]:
        fused = torch.cat([td[n] for n in self.td], dim=0)
        return {self.hf: fused.t().contiguous() if self.conv1d else fused}


# ---------------------------------------------------------------------------------------------- applying a map
def map_tensors(
    rules: Iterable[TensorRule],
    source: dict[str, Tensor],
    target_shapes: dict[str, Shape],
    *,
    direction: str,
    ignore: Iterable[str] = (),
    source_name: str = "checkpoint",
    config_hint: str = "",
) -> dict[str, Tensor]:
    """Apply `rules` to `source` ("to_textdiff": HF -> trunk, "to_hf": trunk -> HF) with shape asserts.

    target_shapes: every tensor the target model has (from the model built from the translated config).
    ignore: regexes of source names to drop silently (non-persistent buffers some checkpoints carry).
    Raises ConversionError naming the tensor, its shape and the shape the config implies.
    """
    if direction not in ("to_textdiff", "to_hf"):
        raise ValueError(f"direction must be 'to_textdiff' or 'to_hf', got {direction!r}")
    rules = list(rules)
    ignore_patterns = [re.compile(p) for p in ignore]
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        if direction == "to_textdiff":
            src_names = rule.hf_names
            expected = rule.hf_shapes({n: target_shapes[n] for n in rule.td_names})
        else:
            src_names = rule.td_names
            expected = rule.td_shapes({n: target_shapes[n] for n in rule.hf_names})
        for name in src_names:
            if name not in source:
                raise ConversionError(f"{source_name} has no tensor {name!r}{config_hint}")
            shape = tuple(source[name].shape)
            if shape != tuple(expected[name]):
                raise ConversionError(
                    f"{source_name} tensor {name!r} has shape {shape} but its config implies "
                    f"{tuple(expected[name])}{config_hint}: the weights do not match the config; fix config.json "
                    "or re-export the checkpoint"
                )
        mapped = rule.to_textdiff(source) if direction == "to_textdiff" else rule.to_hf(source)
        out.update(mapped)
        used.update(src_names)
    leftover = sorted(n for n in source if n not in used and not any(p.search(n) for p in ignore_patterns))
    if leftover:
        preview = ", ".join(leftover[:5]) + (f" (+{len(leftover) - 5} more)" if len(leftover) > 5 else "")
        raise ConversionError(f"{source_name} has tensors the name map does not cover: {preview}{config_hint}")
    missing = sorted(set(target_shapes) - set(out))
    if missing:
        raise ConversionError(f"the name map leaves target tensors unset: {', '.join(missing[:5])}")
    return out


# ---------------------------------------------------------------------------------------------- adapters
# HF config keys that describe the checkpoint file, not the architecture (a dequantised GGUF is no longer quantised)
_FILE_KEYS = ("quantization_config", "_name_or_path", "transformers_version", "dtype", "torch_dtype")


def hf_base_dict(hf_config: Any) -> dict[str, Any]:
    """The HF config as a JSON-able dict without file-format keys: what converting back starts from (only the
    values that differ from the class defaults, so it survives a JSON round trip unchanged; a released model's
    config.json read as a plain `RawConfig` is kept whole)."""
    data = hf_config.to_diff_dict() if hasattr(hf_config, "to_diff_dict") else dict(hf_config.raw)
    for key in _FILE_KEYS:
        data.pop(key, None)
    return data


def refuse_unexpressible(architecture: str, wanted: dict[str, tuple[Any, Any]]) -> None:
    """Raise naming the first trunk option (name -> (value, what the layout needs)) the layout cannot express."""
    for name, (value, needed) in wanted.items():
        if value != needed:
            raise UnsupportedArchitectureError(f"{architecture} cannot express {name}={value!r} (it needs {needed!r})")


def first_id(value: Any) -> int | None:
    """Llama 3 lists several eos ids; the trunk's samplers stop at one, the first."""
    return value[0] if isinstance(value, (list, tuple)) else value


class RawConfig:
    """A config.json whose model class transformers does not ship (LLaDA, Dream: `trust_remote_code` models),
    read as attributes without running its code; `defaults` stand in for the keys the file leaves out (the
    published config class's defaults)."""

    def __init__(self, raw: dict[str, Any], defaults: dict[str, Any] | None = None):
        self.raw = dict(raw)
        self.__dict__.update({**(defaults or {}), **raw})

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class ArchitectureAdapter(ABC):
    """What textdiff knows about one HF causal-LM class: config translation and the tensor name map.

    Released diffusion LMs (LLaDA, Dream) are adapters too: `released_diffusion` says their converted config is
    bidirectional with their own [MASK] (`mask_token`, already in their vocabulary) and their own logit shift,
    and that their class is not in transformers (their config.json is read as a `RawConfig`, export writes the
    original layout as files)."""

    architecture: ClassVar[str]
    """HF class name, e.g. "LlamaForCausalLM" (what config.json lists under `architectures`)."""
    base_model_prefix: ClassVar[str]
    """prefix of the trunk's tensors in HF checkpoints ("model", "transformer")."""
    ignored_tensors: ClassVar[tuple[str, ...]] = ()
    """regexes of buffers that older checkpoints carry and the trunk recomputes (rotary inv_freq, causal masks)."""
    released_diffusion: ClassVar[bool] = False
    """a released diffusion LM (not an AR source): converted bidirectional, with its own [MASK] and logit shift."""
    mask_token: ClassVar[str | None] = None
    """the [MASK] token string of a released diffusion LM's tokenizer ("<|mdm_mask|>" for LLaDA)."""
    config_defaults: ClassVar[dict[str, Any]] = {}
    """defaults of the published config class, for keys a released model's config.json leaves out."""

    def check_state_dict(self, hf_config: Any, state_dict: dict[str, Tensor]) -> None:
        """Raise ConversionError for a checkpoint that contradicts its config in a way shapes cannot show."""

    @abstractmethod
    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        """TextDiffConfig keyword arguments for the architecture of `hf_config` (raises for unsupported options)."""

    @abstractmethod
    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> Any:
        """The HF config of a trunk config; `base` (the original HF config dict) supplies everything else."""

    @property
    @abstractmethod
    def hf_embedding(self) -> str:
        """Name of the HF input embedding (the tensor a tied head shares)."""

    @abstractmethod
    def name_map(self, num_layers: int, td_config: Any) -> list[TensorRule]:
        """One rule per HF tensor (fused ones grouped) of a model with `num_layers` blocks."""

    def normalise_keys(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Checkpoints saved from the base model (e.g. the original `gpt2`) lack the prefix; add it."""
        prefix = self.base_model_prefix + "."
        if any(k.startswith(prefix) for k in state_dict):
            return state_dict
        return {(k if k == "lm_head.weight" else prefix + k): v for k, v in state_dict.items()}
