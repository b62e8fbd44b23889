"""Families: each is one folder (config dataclass, builder, objective, pipeline) registered by name.

`get_family("masked")` returns the registered family; a family defined outside textdiff registers itself with
`@register_family` when its module is imported (a recipe may name it by module path: `family: mypkg.toy`).
"""

# the built-in families register themselves when imported
from textdiff.families import ar, bd3, cadd, continuous, flow, masked, planner  # noqa: F401
from textdiff.families.base import (
    CONFIG_KEY,
    FAMILIES,
    Built,
    Family,
    FamilyError,
    family_of_checkpoint,
    get_family,
    register_family,
)

__all__ = ["CONFIG_KEY", "FAMILIES", "Built", "Family", "FamilyError", "family_of_checkpoint", "get_family",
           "register_family"]
