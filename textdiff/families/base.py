"""What a family is, and the registry that names them.

A family (masked, ar, flow, ... or one defined outside textdiff) is one folder that owns:
- `config_class`: the dataclass that is the schema of the recipe's `objective` section (its fields, documented
  once, are the family's options; nothing mirrors them);
- `build(recipe, options, out)`: data, model and objective for the run skeleton (`textdiff.train.run`);
- `after_training(...)`: what the family measures or draws once training ends (task accuracy, sample grids);
- `sample(checkpoint, config, args)`: the `textdiff sample` pipeline for its checkpoints.
The run skeleton, the CLI and `load_recipe` look families up here and never name one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["FAMILIES", "Built", "Family", "FamilyError", "family_of_checkpoint", "get_family", "register_family"]

# the config.json key recording a model's family, and its reader, live with the checkpoint I/O (any layer reads them)
from textdiff.modeling.checkpoint_io import FAMILY_CONFIG_KEY as CONFIG_KEY  # noqa: F401 (re-exported)
from textdiff.modeling.checkpoint_io import family_of_checkpoint


class FamilyError(ValueError):
    """An unknown family name, or a family that does not fit the contract."""


@dataclass
class Built:
    """What a family's `build` hands the run skeleton."""

    model: Any
    """the `PreTrainedModel` to train."""
    objective: Any
    """the `textdiff.objectives.Objective` that noises and scores batches."""
    train_dataset: Any
    """training examples (a `datasets.Dataset` or any map-style dataset)."""
    eval_dataset: Any
    """validation examples."""
    collator: Any
    """batches examples into the dict of tensors the objective reads."""
    processing_class: Any = None
    """the tokenizer saved beside the model (None for families without one)."""
    data_meta: dict = field(default_factory=dict)
    """what the data was (corpus hash, task, sizes), recorded in results.json."""


class Family(ABC):
    """One diffusion (or AR) family on the shared trunk. Subclasses set `name` and `config_class`."""

    name: ClassVar[str]
    """the name recipes give as `family:` and checkpoints record as `textdiff_family`."""
    config_class: ClassVar[type]
    """dataclass of the recipe's `objective` section."""

    @abstractmethod
    def build(self, recipe, options, out: Path) -> Built:
        """Data, model and objective of a recipe; `options` is the recipe's `objective` section (a
        `config_class` instance) and `out` the run directory."""

    def check_recipe(self, recipe) -> None:
        """Checks across recipe sections that only this family knows (raise ValueError naming the keys); called
        when the recipe is loaded, before anything trains."""

    def decoder(self, recipe) -> str | None:
        """How the trained model decodes, for checking the `sample` section: "masked", "autoregressive", "flow",
        or None (the family checks its own sampling settings)."""
        return None

    def after_training(self, model, built: Built, recipe, out: Path) -> dict:
        """Extra results once training ended (merged into results.json); runs on the saving process only."""
        return {}

    def summary(self, results: dict) -> list[str]:
        """Lines `textdiff train` prints about a finished run (default: the validation metrics)."""
        ev = results["final_eval"]
        return [", ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in ev.items() if isinstance(v, float))]

    @abstractmethod
    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        """`textdiff sample CHECKPOINT ...` for a checkpoint of this family (`config`: its config.json, already
        checked): check `args`, load, draw, print; returns the exit code."""


FAMILIES: dict[str, Family] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: register a family under `cls.name` (a second family with the same name is an error)."""
    if not isinstance(getattr(cls, "name", None), str) or not hasattr(cls, "config_class"):
        raise FamilyError(f"{cls.__name__} must set the class attributes `name` and `config_class`")
    if cls.name in FAMILIES and type(FAMILIES[cls.name]) is not cls:
        raise FamilyError(f"a family named {cls.name!r} is already registered ({type(FAMILIES[cls.name]).__name__})")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(name: str) -> Family:
    """The family registered as `name`; a dotted module path (`mypkg.families.toy`) is imported first, so a
    family defined outside textdiff registers itself on import."""
    if name not in FAMILIES and "." in name:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise FamilyError(f"family {name!r}: cannot import its module ({err})") from None
        registered = [n for n, f in FAMILIES.items() if type(f).__module__ == name]
        if len(registered) != 1:
            raise FamilyError(f"module {name!r} must register exactly one family with @register_family, "
                              f"found {len(registered)}")
        name = registered[0]
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FamilyError(f"unknown family {name!r}{hint}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
