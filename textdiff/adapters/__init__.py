"""AR checkpoints become diffusion LMs: converters (HF Llama / Qwen2 / Qwen3 / Mistral / GPT-2 <-> `TextDiffModel`,
as name maps with shape asserts), the released diffusion LMs (LLaDA, LLaDA-MoE, Dream <-> their published layouts:
`to_hf_layout`) and the adaptation tools (attention-mask annealing, LoRA).

    from textdiff.adapters import from_hf, to_hf, convert_checkpoint
    model = from_hf(hf_causal_lm)              # causal mode: the HF logits; logit_shift=True for adaptation
    convert_checkpoint("smollm2", "runs/smollm2_textdiff")      # = textdiff convert --from smollm2 --to ...
"""

from textdiff.objectives.anneal import anneal_ratio, annealed_attention_mask
from textdiff.adapters.base import ConversionError, MissingDependencyError, UnsupportedArchitectureError
from textdiff.adapters.convert import (
    add_mask_token,
    convert_checkpoint,
    ensure_textdiff_checkpoint,
    export_checkpoint,
    from_hf,
    load_hf_dir,
    max_logit_difference,
    to_hf,
    to_hf_layout,
)
from textdiff.adapters.lora import apply_lora, merge_lora
from textdiff.adapters.registry import ADAPTERS, architecture_of, get_adapter

__all__ = [
    "ADAPTERS",
    "ConversionError",
    "MissingDependencyError",
    "UnsupportedArchitectureError",
    "add_mask_token",
    "anneal_ratio",
    "annealed_attention_mask",
    "apply_lora",
    "architecture_of",
    "convert_checkpoint",
    "ensure_textdiff_checkpoint",
    "export_checkpoint",
    "from_hf",
    "get_adapter",
    "load_hf_dir",
    "max_logit_difference",
    "merge_lora",
    "to_hf",
    "to_hf_layout",
]
