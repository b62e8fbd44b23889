"""Recipes: YAML files + `key=value` overrides, validated against the structured configs below.

An unknown key is an error that names the key and the nearest valid one; a value of the wrong type is an
error that names the key and the type it needs; a value out of range (or inconsistent with another key) is an
error from the section's `validate()`, when the recipe is loaded and not after a training run. Nothing is
silently dropped or coerced.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from textdiff.rl.options import DiffusionRLOptions


class RecipeError(ValueError):
    """A recipe or override that does not fit the structured config."""


def _show(value: Any) -> str:
    """A value as it would be written in a recipe (null, true, 'text', 3)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


class _Rules:
    """Range and choice checks of one recipe section: a failure is a RecipeError naming the key, what is valid
    and the value given (`model.hidden_size must be >= 1, got -64`)."""

    def __init__(self, section: str, config: Any):
        self.section, self.config = section, config

    def check(self, name: str, ok: bool, requirement: str) -> None:
        if not ok:
            value = getattr(self.config, name)
            raise RecipeError(f"{self.section}.{name} {requirement}, got {_show(value)}")

    def at_least(self, low: float, *names: str, optional: bool = False) -> None:
        for name in names:
            value = getattr(self.config, name)
            if not (optional and value is None):
                self.check(name, value >= low, f"must be >= {low}" + (" (or null)" if optional else ""))

    def in_range(self, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
        value = getattr(self.config, name)
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        self.check(name, ok, f"must be in {interval}")

    def one_of(self, name: str, choices: Iterable[str], *, optional: bool = False) -> None:
        value, choices = getattr(self.config, name), list(choices)
        valid = ", ".join(choices) + (" (or null)" if optional else "")
        self.check(name, (optional and value is None) or value in choices, f"must be one of {valid}")


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    """where checkpoints, the tokenizer, tensorboard logs and results go."""
    seed: int = 0
    """seed of model init, data order and masking."""
    overwrite: bool = False
    """start over in an output_dir that already holds a run (deletes its checkpoints, final and results.json)."""

    def validate(self) -> None:
        rules = _Rules("run", self)
        rules.check("output_dir", bool(self.output_dir.strip()), "must be a directory path")
        rules.in_range("seed", 0, 2**32 - 1)


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
    """bidirectional | causal | block_causal (default: what the family trains)."""
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

    def validate(self) -> None:
        from textdiff.modeling import ATTENTION_MODES

        rules = _Rules("model", self)
        rules.at_least(1, "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
                       "block_size")
        rules.at_least(1, "num_key_value_heads", "intermediate_size", optional=True)
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads or self.num_attention_heads
        rules.check("hidden_size", self.hidden_size % heads == 0,
                    f"must be a multiple of model.num_attention_heads ({heads})")
        rules.check("hidden_size", (self.hidden_size // heads) % 2 == 0,
                    f"must give an even head size (RoPE rotates pairs); hidden_size / num_attention_heads is "
                    f"{self.hidden_size // heads}")
        rules.check("num_attention_heads", heads % kv_heads == 0,
                    f"must be a multiple of model.num_key_value_heads ({kv_heads})")
        rules.at_least(0, "lora_rank")
        rules.check("rope_theta", self.rope_theta > 0, "must be > 0")
        rules.one_of("attention_mode", ATTENTION_MODES, optional=True)
        rules.check("lora_alpha", self.lora_alpha > 0, "must be > 0")
        rules.in_range("lora_dropout", 0, 1, high_open=True)


@dataclass
class TokenizerConfig:
    name: str = "bpe"
    """'bpe' (train a byte-level BPE on the training split), 'gpt2', 'smollm2', or a tokenizer directory."""
    vocab_size: int = 4096
    """vocabulary size of a trained BPE."""
    split_digits: bool = False
    """trained BPE only: every digit is its own token, so numbers are spelled alike in prompts and answers."""

    def validate(self) -> None:
        from textdiff.data.tokenizers import TOKENIZER_NAMES

        rules = _Rules("tokenizer", self)
        rules.check("name", self.name in TOKENIZER_NAMES or Path(self.name).expanduser().is_dir(),
                    f"must be one of {', '.join(TOKENIZER_NAMES)} or an existing tokenizer directory")
        rules.at_least(1, "vocab_size")
        rules.check("split_digits", not self.split_digits or self.name == "bpe",
                    f"applies to a trained 'bpe' tokenizer only (tokenizer.name is {_show(self.name)})")


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
    streaming: bool = False
    """read, tokenise and pack the corpus on the fly (`datasets` iterable datasets) instead of loading it: same
    blocks, bounded memory, sharded over the ranks; needs trainer.max_steps (a stream has no length)."""
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

    def validate(self) -> None:
        from textdiff.data.tasks import TASKS

        rules = _Rules("data", self)
        rules.check("corpus", bool(self.corpus or self.task or self.images),
                    "must be set when data.task and data.images are not (the recipe needs training data)")
        rules.check("streaming", not (self.streaming and (self.task or self.images)),
                    "streams a text corpus (data.corpus); data.task and data.images are generated in memory")
        rules.check("images", not (self.images and self.task),
                    f"and data.task ({_show(self.task)}) both replace data.corpus: set one of them")
        rules.one_of("task", TASKS, optional=True)
        if self.images:
            from textdiff.families.flow import IMAGE_DATASETS

            rules.one_of("images", IMAGE_DATASETS)
        rules.check("text_field", bool(self.text_field), "must name a column")
        rules.in_range("valid_percent", 0, 100, high_open=True)
        rules.at_least(1, "seq_len", "num_train_examples", "num_valid_examples", "max_length")
        rules.at_least(1, "max_valid_blocks", "pad_to", "answer_length", optional=True)
        rules.check("pad_to", self.pad_to is None or self.pad_to <= self.max_length,
                    f"must be <= data.max_length ({self.max_length})")
        rules.check("pad_to", self.pad_to is None or self.answer_length is None,
                    "set either data.pad_to (a fixed sequence length) or data.answer_length (a fixed answer canvas)")
        rules.at_least(0, "exclude_train_examples")
        rules.check("exclude_train_examples", not self.exclude_train_examples or bool(self.task),
                    "needs data.task: it leaves out problems of a synthetic task")


@dataclass
class EvalConfig:
    elbo_samples: int = 4
    """Monte Carlo samples of t per validation sequence for the ELBO bound."""
    seed: int = 1234
    """seed of the evaluation masks (fixed: evaluations are comparable across steps)."""
    task_problems: int = 200
    """task recipes: held-out test problems decoded with the `sample` settings and checked by the verifier."""

    def validate(self) -> None:
        rules = _Rules("eval", self)
        rules.at_least(1, "elbo_samples")
        rules.at_least(0, "task_problems")
        rules.in_range("seed", 0, 2**32 - 1)


@dataclass
class TrainerConfig:
    max_steps: int | None = 1000
    """optimizer steps (required: textdiff never derives them from epochs)."""
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
    fsdp: str | None = None
    """HF Trainer's FSDP2: 'full_shard' or 'shard_grad_op', optionally + ' offload' (parameters on the CPU); CUDA
    GPUs only: accelerate never turns FSDP on for CPU processes (on a CPU use trainer.deepspeed)."""
    bf16: bool = False
    """bfloat16 mixed precision."""
    gradient_checkpointing: bool = False
    """recompute each trunk block in the backward pass instead of storing its activations (less memory, ~1/3 more
    compute; same gradients)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """logging integrations."""
    dataloader_num_workers: int = 0
    """worker processes of the data loader."""
    resume_from_checkpoint: str | None = None
    """'latest' or a checkpoint path to continue from."""

    def validate(self) -> None:
        from transformers.trainer_utils import SchedulerType

        rules = _Rules("trainer", self)
        # transformers reads max_steps <= 0 as "train num_train_epochs epochs", which textdiff never sets
        rules.check("max_steps", self.max_steps is not None and self.max_steps >= 1,
                    "must be >= 1 (the run trains exactly max_steps optimizer steps)")
        rules.at_least(1, "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                       "logging_steps")
        rules.at_least(1, "eval_steps", "save_steps", "save_total_limit", optional=True)
        rules.at_least(0, "learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "dataloader_num_workers")
        rules.in_range("adam_beta2", 0, 1, high_open=True)
        rules.one_of("lr_scheduler_type", [s.value for s in SchedulerType])
        if self.fsdp is not None:
            from textdiff.train.distributed import check_fsdp

            try:
                check_fsdp(self.fsdp, deepspeed=self.deepspeed)
            except ValueError as err:
                raise RecipeError(str(err)) from None
        if self.deepspeed is not None:
            from textdiff.train.run import DEEPSPEED_PRESETS

            rules.check("deepspeed", self.deepspeed in DEEPSPEED_PRESETS or Path(self.deepspeed).is_file(),
                        f"must be one of {', '.join(DEEPSPEED_PRESETS)} or an existing DeepSpeed JSON file")


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

    def validate(self, decoder: str) -> None:
        """`decoder`: "masked" (blocks of block_length, `steps` in total), "autoregressive" (one token per pass:
        steps and block_length are unused) or "flow" (image / video: `steps` solver steps)."""
        rules = _Rules("sample", self)
        rules.at_least(1, "steps", "gen_length")
        if decoder == "masked":
            from textdiff.samplers.generate import check_decoding_schedule

            try:
                check_decoding_schedule(self.gen_length, self.steps, self.block_length,
                                        names=("sample.gen_length", "sample.steps", "sample.block_length"))
            except ValueError as err:
                raise RecipeError(str(err)) from None
        elif decoder == "flow":
            from textdiff.samplers.continuous import CONTINUOUS_SAMPLERS

            # the DiT predicts flow velocities: any continuous rule but DDIM's noise-prediction one
            rules.one_of("solver", [name for name in CONTINUOUS_SAMPLERS if name != "ddim"])
            rules.check("guidance_scale", self.guidance_scale >= 0, "must be >= 0 (1 = no guidance)")


@dataclass
class RLConfig(DiffusionRLOptions):
    """`textdiff rl`: coupled-GRPO / d1 on TRL's GRPOTrainer, from an SFT checkpoint (textdiff.rl.trainer). The
    rollout and estimator options (estimator, t_min, t_max, p_mask_prompt, random_masking, all_masked_view,
    diffusion_steps, block_length, sampler, sampler_options) are `textdiff.rl.options.DiffusionRLOptions`; the
    fields below go to TRL's GRPOConfig under the same names (gen_length as max_completion_length)."""

    init_from: str | None = None
    """SFT checkpoint directory (model + tokenizer) the policy starts from, e.g. runs/masked_countdown/final."""
    reward_funcs: list[str] = field(default_factory=list)
    """reward names from textdiff.rl.rewards.REWARDS (empty: the task's own reward)."""
    reward_weights: list[float] | None = None
    """weights of reward_funcs (None: all 1)."""
    num_generations: int = 8
    """completions per prompt (the GRPO group)."""
    gen_length: int = 16
    """rollout canvas length (TRL's max_completion_length)."""
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

    def validate(self) -> None:
        from textdiff.samplers.generate import check_decoding_schedule

        rules = _Rules("rl", self)
        try:
            self.check_rl_options(self.gen_length, prefix="rl.")  # the rules CoupledGRPOConfig applies too
        except ValueError as err:
            raise RecipeError(str(err)) from None
        rules.at_least(2, "num_generations")  # GRPO's advantage compares completions of one prompt
        rules.at_least(1, "num_iterations", "ref_model_sync_steps")
        rules.at_least(1, "eval_steps", optional=True)
        rules.at_least(0, "temperature", "beta")
        rules.check("epsilon", self.epsilon > 0, "must be > 0")
        rules.check("sync_ref_model", not self.sync_ref_model or self.beta > 0,
                    "needs rl.beta > 0 (a reference model to sync)")
        try:
            check_decoding_schedule(self.gen_length, self.diffusion_steps, self.block_length or self.gen_length,
                                    names=("rl.gen_length", "rl.diffusion_steps", "rl.block_length"))
        except ValueError as err:
            raise RecipeError(str(err)) from None
        if self.reward_funcs:
            from textdiff.rl.rewards import REWARDS

            for name in self.reward_funcs:
                if name not in REWARDS:
                    raise RecipeError(f"rl.reward_funcs must name rewards of {', '.join(REWARDS)}, got {name!r}")
        if self.reward_weights is not None:
            n_rewards = len(self.reward_funcs) or 1
            rules.check("reward_weights", len(self.reward_weights) == n_rewards,
                        f"needs one weight per reward ({n_rewards})")


@dataclass
class Recipe:
    family: str = "masked"
    """the family trained: masked | ar | flow | ... (`textdiff info` lists them; a module path such as
    mypkg.families.toy imports a family defined outside textdiff). It picks the schema of `objective`."""
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: Any = None
    """the family's options: an instance of its `config_class` (e.g. MaskedDiffusionOptions)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def validate(self) -> None:
        """Every section's own checks, then the family's checks across sections (`load_recipe` calls this; the
        family's `objective` section checked itself when it was built)."""
        from textdiff.families import get_family

        if self.data.streaming and self.trainer.max_steps is None:
            raise RecipeError("data.streaming=true needs trainer.max_steps: a streamed corpus has no length, so the "
                              "number of steps (and the LR schedule over them) cannot come from the data")
        for section in (self.run, self.model, self.tokenizer, self.data, self.eval, self.trainer, self.rl):
            section.validate()
        family = get_family(self.family)
        decoder = family.decoder(self)
        if decoder is not None:
            self.sample.validate(decoder)
        try:
            family.check_recipe(self)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        data, sample = self.data, self.sample
        if data.answer_length is not None and data.answer_length != sample.gen_length:
            raise RecipeError(
                f"data.answer_length ({data.answer_length}) must equal sample.gen_length ({sample.gen_length}): "
                "the model is evaluated on the canvas it was trained on"
            )


def _check_keys(given: Any, schema: type, prefix: str = "", objective: type | None = None,
                family: str = "") -> None:
    """Raise RecipeError for the first key of `given` that `schema` does not have, with the nearest valid key;
    `objective` is the schema of the `objective` section (the family's config class)."""
    if not isinstance(given, dict) or not dataclasses.is_dataclass(schema):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    family_options = {f.name for f in dataclasses.fields(objective)} if objective is not None else set()
    for key, value in given.items():
        if key not in fields:
            if prefix and key in family_options:  # a family option written in another section
                raise RecipeError(f"'{prefix}{key}' is an option of family {family}: write it as objective.{key}")
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields) or 'none'}"
            owner = f" of family {family}" if schema is objective else ""
            raise RecipeError(f"unknown recipe key '{prefix}{key}'{owner}{hint}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if not prefix and key == "objective":
            sub = objective
        if sub is not None and dataclasses.is_dataclass(sub):
            if value is not None and not isinstance(value, dict):
                raise RecipeError(f"recipe section '{prefix}{key}' must be a mapping of keys, got {_show(value)}")
            _check_keys(value, sub, f"{prefix}{key}.", objective, family)


def _merge(base: DictConfig, update: dict, source: str, family) -> DictConfig:
    _check_keys(update, Recipe, objective=family.config_class, family=family.name)
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise RecipeError(f"bad value for recipe key '{key}' in {source}: {reason}") from None


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """'line 2, column 1: found character that cannot start any token (...)' for a YAML syntax error."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    lines = text.splitlines()
    if mark.line < len(lines) and mark.column < len(lines[mark.line]) and lines[mark.line][mark.column] == "\t":
        problem += " (a tab: YAML indents with spaces)"
    return f"{where}: {problem}"


def _read_recipe_file(path: Path) -> dict:
    """The top-level mapping of a YAML recipe; a RecipeError naming the file (and line) for anything else."""
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a directory, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"recipe {path} is not UTF-8 text (byte {err.start}); a recipe is a YAML file") from None
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err.strerror or err}") from None
    try:
        shape = yaml.safe_load(text)  # the top-level type; OmegaConf would read a bare string as {string: None}
        given = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)))  # OmegaConf's loader: duplicate keys fail
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {_yaml_problem(err, text)}") from None
    if shape is None:
        raise RecipeError(f"recipe {path} is empty: a recipe is a mapping of sections (run:, model:, data:, ...)")
    if not isinstance(shape, dict):
        line = yaml.compose(text, Loader=yaml.SafeLoader).start_mark.line + 1
        raise RecipeError(f"recipe {path} must be a mapping of sections (run:, model:, data:, ...), "
                          f"found a {type(shape).__name__} at line {line}")
    return given


def _parse_override(item: str) -> dict:
    key, _, value = item.partition("=")
    if not key.strip() or any(not part for part in key.split(".")) or key != key.strip():
        raise RecipeError(f"override {item!r} is not of the form section.key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([item]))
    except yaml.YAMLError as err:
        raise RecipeError(f"override {item!r}: the value {value!r} is not valid YAML "
                          f"({_yaml_problem(err, value)})") from None


def _family_of(given: list[dict]):
    """The family the recipe names (the last `family` among the file and the overrides; default masked)."""
    from textdiff.families import FamilyError, get_family

    name = "masked"
    for part in given:
        if isinstance(part.get("objective"), dict) and "name" in part["objective"]:
            raise RecipeError(f"objective.name is gone: name the family at the top level "
                              f"(family: {part['objective']['name']})")
        name = part.get("family", name)
    if not isinstance(name, str):
        raise RecipeError(f"family must be a name, got {_show(name)}")
    try:
        return get_family(name)
    except FamilyError as err:
        raise RecipeError(f"family: {err}") from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or the defaults when `path` is None), apply `key=value` overrides and validate every
    section: a RecipeError (a ValueError) names the file or key, the value and what is valid. The recipe's
    `family` picks the schema of its `objective` section."""
    parts = [(str(path), _read_recipe_file(Path(path)))] if path is not None else []
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        parts.append((f"override {item!r}", _parse_override(item)))
    family = _family_of([given for _, given in parts])
    try:
        defaults = family.config_class()
    except (TypeError, ValueError) as err:
        raise RecipeError(f"family {family.name}: its options have no valid defaults ({err})") from None
    cfg = OmegaConf.structured(Recipe(family=family.name, objective=defaults))
    for source, given in parts:
        cfg = _merge(cfg, given, source, family)
    try:
        recipe = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # e.g. an interpolation ${...} that names no key
        key = getattr(err, "full_key", None) or "?"
        raise RecipeError(f"bad value for recipe key '{key}': {str(err).splitlines()[0]}") from None
    except ValueError as err:  # the family's options checked themselves (__post_init__)
        raise RecipeError(f"objective (family {family.name}): {err}") from None
    recipe.validate()
    return recipe
