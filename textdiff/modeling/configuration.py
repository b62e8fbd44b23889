"""`TextDiffConfig`: the one config of the shared Transformer trunk."""

from __future__ import annotations

from transformers import PretrainedConfig

ATTENTION_MODES = ("bidirectional", "causal", "block_causal")


class TextDiffConfig(PretrainedConfig):
    """Configuration of `TextDiffModel`, the trunk every textdiff family shares.

    Args (each documented once, here):
        vocab_size: number of token ids, [MASK] included.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of pre-norm Transformer blocks.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to num_attention_heads.
        intermediate_size: hidden width of the SwiGLU MLP.
        max_position_embeddings: longest sequence the model accepts (RoPE has no table; this is a contract).
        rope_theta: RoPE base frequency.
        rms_norm_eps: epsilon of every RMSNorm.
        attention_mode: "bidirectional" (masked diffusion), "causal" (AR) or "block_causal" (BD3-LM blocks).
        block_size: block length for attention_mode="block_causal".
        time_conditioning: add adaLN-Zero modulation from a timestep t (zero-init: starts as the plain trunk).
        time_embed_dim: width of the timestep embedding when time_conditioning is on.
        tie_word_embeddings: share the token embedding with the output head.
        mask_token_id: id of the [MASK] token (absorbing state of masked diffusion).
        logit_shift: position i predicts token i+1 (AR-adapted models, Dream / DiffuLLaMA).
        initializer_range: std of the normal init of linear and embedding weights.
    """

    model_type = "textdiff"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        attention_mode: str = "bidirectional",
        block_size: int = 32,
        time_conditioning: bool = False,
        time_embed_dim: int = 128,
        tie_word_embeddings: bool = False,
        mask_token_id: int | None = None,
        logit_shift: bool = False,
        initializer_range: float = 0.02,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {attention_mode!r} is not one of {ATTENTION_MODES}")
        num_key_value_heads = num_key_value_heads or num_attention_heads
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )
        if mask_token_id is not None and not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary (vocab_size {vocab_size})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        # SwiGLU keeps the parameter count of a 4x GELU MLP at 8/3 x, rounded to a multiple of 64.
        self.intermediate_size = intermediate_size or 64 * ((8 * hidden_size // 3 + 63) // 64)
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention_mode = attention_mode
        self.block_size = block_size
        self.time_conditioning = time_conditioning
        self.time_embed_dim = time_embed_dim
        self.mask_token_id = mask_token_id
        self.logit_shift = logit_shift
        self.initializer_range = initializer_range
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
