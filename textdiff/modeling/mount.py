"""`mount`: compose a part into a model while its weights keep the model's flat checkpoint names.

A model built from parts would normally save the trunk's weights as `trunk.layers.0...`; checkpoints, the AR
converters (`textdiff.adapters`) and LoRA targets know them as `layers.0...`. Mounting registers the part's
children and parameters on the model itself (so `state_dict`, `named_modules`, `.to()`, peft and DeepSpeed see the
old names) and keeps the part as a plain attribute whose `_modules` / `_parameters` are live views of the model's:
a module the model swaps in later (peft's `modules_to_save` wrapper, HF loading a parameter, `del layers[i]`) is
the one the part runs.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from torch import nn

__all__ = ["mount"]


class _HostSlots(MutableMapping):
    """The entries `names` of a host's `_modules` (or `_parameters`) dict, read and written through to it."""

    def __init__(self, store: dict, names: list[str]):
        self.store, self.names = store, names

    def __getitem__(self, name: str):
        if name not in self.names:
            raise KeyError(name)
        return self.store[name]

    def __setitem__(self, name: str, value) -> None:
        if name not in self.names:
            if name in self.store:
                raise KeyError(f"{name!r} already belongs to the model, not to this part")
            self.names.append(name)
        self.store[name] = value

    def __delitem__(self, name: str) -> None:
        self.names.remove(name)
        del self.store[name]

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self.names if n in self.store])

    def __len__(self) -> int:
        return sum(n in self.store for n in self.names)

    def copy(self) -> dict:
        return dict(self.items())


def mount(host: nn.Module, name: str, part: nn.Module) -> nn.Module:
    """Make `part` available as `host.<name>` with its children and parameters registered on `host` under their
    own names (in the part's order, after what `host` already holds). Returns the part."""
    if part._buffers:
        raise ValueError(f"cannot mount {type(part).__name__}: it has buffers ({', '.join(part._buffers)})")
    for store_name, register in (("_parameters", host.register_parameter), ("_modules", host.add_module)):
        own = getattr(part, store_name)
        for key, value in own.items():
            if hasattr(host, key):
                raise ValueError(f"cannot mount {type(part).__name__} as {name!r}: the model already has {key!r}")
            register(key, value)
        part.__dict__[store_name] = _HostSlots(host.__dict__[store_name], list(own))
    host.__dict__[name] = part  # a plain attribute: registering it would save every weight a second time
    return part
