"""The shared trunk, registered with the HF Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from textdiff.modeling.cache import KVCache, build_attention_mask
from textdiff.modeling.configuration import ATTENTION_MODES, TextDiffConfig
from textdiff.modeling.model import TextDiffModel, TextDiffOutput

AutoConfig.register("textdiff", TextDiffConfig, exist_ok=True)
# One class serves all three: a masked model and a causal model differ only in config.attention_mode.
for _auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
    _auto.register(TextDiffConfig, TextDiffModel, exist_ok=True)

__all__ = ["ATTENTION_MODES", "KVCache", "TextDiffConfig", "TextDiffModel", "TextDiffOutput", "build_attention_mask"]

# Text-to-image / video DiT on the same trunk blocks (flow matching; issue 5).
from textdiff.modeling.dit import DiTConfig, DiTModel  # noqa: E402

AutoConfig.register("textdiff_dit", DiTConfig, exist_ok=True)
AutoModel.register(DiTConfig, DiTModel, exist_ok=True)
__all__ += ["DiTConfig", "DiTModel"]
