"""Models from parts, registered with the HF Auto classes.

Parts: inputs (`inputs.py`: tokens, continuous vectors + self-conditioning, hybrid token + latent, condition prefix,
pooled condition, patches), the trunk (`trunk.py`: blocks, adaLN-Zero time conditioning, attention modes,
positions, KV cache), heads (`heads.py`: token logits, vectors). `TextDiffModel` (text) and `DiTModel`
(images / video) compose them; `mount.py` keeps their checkpoint keys flat; `pretrained.py` holds the one init.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from textdiff.modeling.cache import KVCache, build_attention_mask
from textdiff.modeling.configuration import ATTENTION_MODES, TextDiffConfig
from textdiff.modeling.heads import VectorHead, token_head
from textdiff.modeling.inputs import ConditionPrefix, LatentInput, PatchInput, PooledCondition, VectorInput
from textdiff.modeling.model import TextDiffModel, TextDiffOutput
from textdiff.modeling.trunk import Trunk, TrunkOutput

AutoConfig.register("textdiff", TextDiffConfig, exist_ok=True)
# One class serves all three: a masked model and a causal model differ only in config.attention_mode.
for _auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
    _auto.register(TextDiffConfig, TextDiffModel, exist_ok=True)

__all__ = [
    "ATTENTION_MODES", "ConditionPrefix", "KVCache", "LatentInput", "PatchInput", "PooledCondition", "TextDiffConfig",
    "TextDiffModel", "TextDiffOutput", "Trunk", "TrunkOutput", "VectorHead", "VectorInput", "build_attention_mask",
    "token_head",
]

# Text-to-image / video DiT from the same parts (flow matching; issue 5).
from textdiff.modeling.dit import DiTConfig, DiTModel  # noqa: E402

AutoConfig.register("textdiff_dit", DiTConfig, exist_ok=True)
AutoModel.register(DiTConfig, DiTModel, exist_ok=True)
__all__ += ["DiTConfig", "DiTModel"]
