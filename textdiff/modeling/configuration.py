"""`TextDiffConfig`: the one config of the shared Transformer trunk."""

from __future__ import annotations

from transformers import PretrainedConfig

ATTENTION_MODES = ("bidirectional", "causal", "block_causal")
NORM_TYPES = ("rmsnorm", "layernorm")
MLP_TYPES = ("gated", "dense", "moe")
POSITION_EMBEDDING_TYPES = ("rope", "learned")
ROPE_SCALING_TYPES = ("linear", "llama3", "yarn")
LATENT_PROJECTIONS = ("linear", "identity")


class TextDiffConfig(PretrainedConfig):
    """Configuration of `TextDiffModel`, the trunk every textdiff family shares.

    Args (each documented once, here):
        vocab_size: number of token ids, [MASK] included.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of pre-norm Transformer blocks.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to num_attention_heads.
        intermediate_size: hidden width of the MLP (default: 8/3 x hidden rounded to 64 for "gated", 4 x hidden
            for "dense").
        max_position_embeddings: longest sequence the model accepts (RoPE has no table, so for RoPE this is a
            contract; with learned positions it is the size of the position table).
        rope_theta: RoPE base frequency.
        rms_norm_eps: epsilon of every norm layer (RMSNorm or LayerNorm, see norm_type).
        attention_mode: "bidirectional" (masked diffusion), "causal" (AR) or "block_causal" (BD3-LM blocks).
        block_size: block length for attention_mode="block_causal".
        time_conditioning: add adaLN-Zero modulation from a timestep t (zero-init: starts as the plain trunk).
        time_embed_dim: width of the timestep embedding when time_conditioning is on.
        tie_word_embeddings: share the token embedding with the output head.
        mask_token_id: id of the [MASK] token (absorbing state of masked diffusion).
        logit_shift: position i predicts token i+1 (AR-adapted models, Dream / DiffuLLaMA).
        initializer_range: std of the normal init of linear and embedding weights.
        head_dim: width of one attention head (default hidden_size // num_attention_heads; Llama-family
            checkpoints may set it independently).
        norm_type: "rmsnorm" (Llama family) or "layernorm" (with bias; GPT-2).
        mlp_type: "gated" (down(act(gate(x)) * up(x)): SwiGLU with hidden_act="silu") or "dense"
            (down(act(up(x))): GPT-2).
        hidden_act: activation of the MLP, any name of `transformers.activations.ACT2FN` ("silu", "gelu_new", ...).
        position_embedding_type: "rope" (rotary, half-split convention) or "learned" (absolute table added to the
            token embedding; GPT-2).
        rope_freq_scaling: RoPE frequency scaling as in HF `rope_parameters` without rope_theta, e.g.
            {"rope_type": "llama3", "factor": 8.0, ...}; rope_type one of "linear", "llama3", "yarn"; None = plain.
        qkv_bias: biases on the q/k/v projections (Qwen2, GPT-2).
        attention_out_bias: bias on the attention output projection (GPT-2).
        mlp_bias: biases on the MLP projections (GPT-2).
        adapted_from: provenance of a model converted from an HF causal LM (`textdiff.adapters`):
            {"architecture": ..., "source": ..., "config": <the HF config as a dict>}; used to convert back.
        latent_dim: width of the continuous latent z of the hybrid token + latent input (CADD: `latents=`);
            None = no latent input.
        latent_projection: how z enters: "linear" (zero-initialised, no bias: starts as, and with z = 0 always
            equals, the token-only model) or "identity" (z lives in the embedding space; latent_dim = hidden_size).
        vector_dim: width of continuous input vectors (embedding diffusion: `inputs_vectors=`); None = none.
        vector_normalize: L2-normalise the input vectors to norm sqrt(vector_dim) before projecting them.
        vector_zero_init: zero-initialise the vector projection (vectors as an auxiliary stream added to token
            embeddings: the model starts as the token model).
        vector_self_condition: the vector projection also reads the previous x0 estimate (`self_condition=`).
        prefix_dim: width of the condition vectors put in front of the sequence (`prefix=`), projected to
            hidden_size; None = prefix vectors are passed at hidden_size and used as they are.
        vector_head_dim: width of a vector head beside the token head (`.vectors` [B, L, vector_head_dim]: x0 or
            velocity per position; zero-initialised); None = no vector head.
        qk_norm: RMSNorm (eps rms_norm_eps) over each head's queries and keys before RoPE (Qwen3, LLaDA-MoE).
        num_experts: experts of each MoE MLP (mlp_type="moe").
        num_experts_per_tok: experts each token is routed to (top-k of the router's softmax).
        moe_intermediate_size: hidden width of one expert (intermediate_size is then the width of the dense layers
            of moe_dense_layers).
        shared_expert_intermediate_size: width of a shared expert every token also goes through; None = none.
        norm_topk_prob: renormalise the top-k router probabilities to sum to 1.
        moe_expert_bias: a per-expert bias buffer added to the router probabilities before the top-k.
        moe_dense_layers: indices of the layers that keep a dense gated MLP in a MoE trunk.
        rope_full_precision: rotate queries and keys in float32 whatever the model dtype (LLaDA's
            `rope_full_precision`); the same result in float32, closer to LLaDA in bf16.
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
        head_dim: int | None = None,
        norm_type: str = "rmsnorm",
        mlp_type: str = "gated",
        hidden_act: str = "silu",
        position_embedding_type: str = "rope",
        rope_freq_scaling: dict | None = None,
        qkv_bias: bool = False,
        attention_out_bias: bool = False,
        mlp_bias: bool = False,
        adapted_from: dict | None = None,
        latent_dim: int | None = None,
        latent_projection: str = "linear",
        vector_dim: int | None = None,
        vector_normalize: bool = False,
        vector_zero_init: bool = False,
        vector_self_condition: bool = False,
        prefix_dim: int | None = None,
        vector_head_dim: int | None = None,
        qk_norm: bool = False,
        num_experts: int | None = None,
        num_experts_per_tok: int | None = None,
        moe_intermediate_size: int | None = None,
        shared_expert_intermediate_size: int | None = None,
        norm_topk_prob: bool = False,
        moe_expert_bias: bool = False,
        moe_dense_layers: list[int] | None = None,
        rope_full_precision: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {attention_mode!r} is not one of {ATTENTION_MODES}")
        for name, value, valid in (
            ("norm_type", norm_type, NORM_TYPES),
            ("mlp_type", mlp_type, MLP_TYPES),
            ("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES),
            ("latent_projection", latent_projection, LATENT_PROJECTIONS),
        ):
            if value not in valid:
                raise ValueError(f"{name} {value!r} is not one of {valid}")
        from transformers.activations import ACT2FN

        if hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {hidden_act!r} is not an activation name of transformers.activations.ACT2FN")
        if rope_freq_scaling is not None and rope_freq_scaling.get("rope_type") not in ROPE_SCALING_TYPES:
            raise ValueError(
                f"rope_freq_scaling rope_type {rope_freq_scaling.get('rope_type')!r} is not one of {ROPE_SCALING_TYPES}"
            )
        num_key_value_heads = num_key_value_heads or num_attention_heads
        if head_dim is None and hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )
        if latent_projection == "identity" and latent_dim is not None and latent_dim != hidden_size:
            raise ValueError(f"latent_projection 'identity' needs latent_dim ({latent_dim}) = hidden_size "
                             f"({hidden_size})")
        if mlp_type == "moe":
            if not (num_experts and num_experts_per_tok and moe_intermediate_size):
                raise ValueError("mlp_type 'moe' needs num_experts, num_experts_per_tok and moe_intermediate_size")
            if not 0 < num_experts_per_tok <= num_experts:
                raise ValueError(f"num_experts_per_tok {num_experts_per_tok} must be in [1, num_experts={num_experts}]")
            if any(not 0 <= i < num_hidden_layers for i in moe_dense_layers or ()):
                raise ValueError(f"moe_dense_layers {moe_dense_layers} name layers outside 0..{num_hidden_layers - 1}")
        if mask_token_id is not None and not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary (vocab_size {vocab_size})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        # SwiGLU keeps the parameter count of a 4x GELU MLP at 8/3 x, rounded to a multiple of 64.
        default_intermediate = 64 * ((8 * hidden_size // 3 + 63) // 64) if mlp_type == "gated" else 4 * hidden_size
        self.intermediate_size = intermediate_size or default_intermediate
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
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.norm_type = norm_type
        self.mlp_type = mlp_type
        self.hidden_act = hidden_act
        self.position_embedding_type = position_embedding_type
        self.rope_freq_scaling = dict(rope_freq_scaling) if rope_freq_scaling is not None else None
        self.qkv_bias = qkv_bias
        self.attention_out_bias = attention_out_bias
        self.mlp_bias = mlp_bias
        self.adapted_from = adapted_from
        self.latent_dim, self.latent_projection = latent_dim, latent_projection
        self.vector_dim, self.vector_normalize = vector_dim, vector_normalize
        self.vector_zero_init, self.vector_self_condition = vector_zero_init, vector_self_condition
        self.prefix_dim, self.vector_head_dim = prefix_dim, vector_head_dim
        self.qk_norm = qk_norm
        self.num_experts, self.num_experts_per_tok = num_experts, num_experts_per_tok
        self.moe_intermediate_size, self.shared_expert_intermediate_size = (moe_intermediate_size,
                                                                            shared_expert_intermediate_size)
        self.norm_topk_prob, self.moe_expert_bias = norm_topk_prob, moe_expert_bias
        self.moe_dense_layers = list(moe_dense_layers) if moe_dense_layers else None
        self.rope_full_precision = rope_full_precision
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
