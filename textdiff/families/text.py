"""What every text family shares: corpus or task data, the tokenizer, a `TextDiffModel` (random or from a
checkpoint), task accuracy and samples after training, and the `textdiff sample` pipeline. A text family adds
only its objective (and the attention its model runs with)."""

from __future__ import annotations

import argparse
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

from textdiff.data import (
    PackedCollator,
    SFTCollator,
    ensure_mask_token,
    load_corpus,
    load_tokenizer,
    pack_dataset,
)
from textdiff.data.corpora import check_training_splits
from textdiff.data.streaming import PackedStream, stream_corpus, take_blocks
from textdiff.data.tasks import excluded_train_keys, get_task
from textdiff.families.base import Built, Family
from textdiff.modeling import TextDiffConfig, TextDiffModel
from textdiff.modeling.checkpoint_io import load_model as load_checkpoint_model
from textdiff.modeling.checkpoint_io import load_tokenizer as load_checkpoint_tokenizer

__all__ = ["TextFamily", "build_text_data", "build_text_model"]


def build_text_data(recipe, tokenizer_dir: Path | str | None):
    """(tokenizer, train_dataset, valid_dataset, collator, data_meta) of a text recipe: packed corpus blocks for
    pretraining, prompt/answer pairs of `data.task` for SFT."""
    data, tok_cfg = recipe.data, recipe.tokenizer
    excluded = excluded_train_keys(data)  # before the branches: an exclusion without data.task is an error
    if data.task:
        task = get_task(data.task, **data.task_kwargs)
        train = task.to_dataset(data.num_train_examples, "train", recipe.run.seed, excluded)
        valid = task.to_dataset(data.num_valid_examples, "valid", recipe.run.seed)
        texts = (p + " " + a for p, a in zip(train["prompt"], train["answer"]))
        meta = {"task": data.task, "task_kwargs": dict(data.task_kwargs), "n_train": len(train), "n_valid": len(valid)}
    else:
        if not data.corpus:
            raise ValueError("the recipe sets neither data.corpus nor data.task")
        sources = [s.strip() for s in data.corpus.split(",")] if "," in data.corpus else data.corpus
        load = stream_corpus if data.streaming else load_corpus
        corpus = load(sources, text_field=data.text_field, valid_percent=data.valid_percent)
        train, valid, meta = corpus.train, corpus.valid, dict(corpus.meta)
        texts = corpus.train_texts() if data.streaming else train["text"]

    if tokenizer_dir is not None:
        tokenizer = load_checkpoint_tokenizer(tokenizer_dir, what="model.init_from")
    else:
        tokenizer = load_tokenizer(tok_cfg.name, train_texts=texts, vocab_size=tok_cfg.vocab_size,
                                   cache_dir=Path(recipe.run.output_dir) / "tokenizer", split_digits=tok_cfg.split_digits)

    if data.task:
        collator = SFTCollator(tokenizer, max_length=data.max_length, pad_to=data.pad_to, answer_length=data.answer_length)
        return tokenizer, train, valid, collator, meta
    if data.streaming:
        return (tokenizer, *_streamed_blocks(train, valid, tokenizer, data, meta), PackedCollator(), meta)
    train = pack_dataset(train, tokenizer, data.seq_len)
    valid = pack_dataset(valid, tokenizer, data.seq_len)
    check_training_splits(meta, len(train), len(valid), data.seq_len)
    if data.max_valid_blocks is not None and len(valid) > data.max_valid_blocks:
        valid = valid.select(range(data.max_valid_blocks))
    meta.update(train_blocks=len(train), valid_blocks=len(valid), seq_len=data.seq_len)
    return tokenizer, train, valid, PackedCollator(), meta


def _streamed_blocks(train, valid, tokenizer, data, meta: dict):
    """(PackedStream of the train documents, the first data.max_valid_blocks valid blocks in memory); `meta` gets
    what is known without reading the whole corpus."""
    source = {"corpus": meta.get("files") or meta["name"], "text_field": data.text_field,
              "valid_percent": data.valid_percent}
    stream = PackedStream(train, tokenizer, data.seq_len, source=source)
    valid = take_blocks(PackedStream(valid, tokenizer, data.seq_len), data.max_valid_blocks)
    check_training_splits(meta, int(stream.has_block()), len(valid), data.seq_len)
    meta.update(train_blocks=None, valid_blocks=len(valid), seq_len=data.seq_len)
    return stream, valid


def build_text_model(
    *,
    tokenizer,
    attention_mode: str,
    logit_shift: bool = False,
    init_dir: str | None = None,
    context_needed: int = 0,
    hidden_size: int = 256,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    rope_theta: float = 10000.0,
    block_size: int = 32,
    time_conditioning: bool = False,
    tie_word_embeddings: bool = False,
) -> TextDiffModel:
    """A random `TextDiffModel` of this size for `tokenizer`, or the checkpoint `init_dir` (its size wins) set to
    `attention_mode` and `logit_shift`. `context_needed`: the longest training sequence."""
    if init_dir:
        model = load_checkpoint_model(init_dir, what="model.init_from")
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(f"vocab mismatch: checkpoint {init_dir} has vocab_size {model.config.vocab_size} but "
                             f"its tokenizer has {len(tokenizer)} tokens")
        # a checkpoint whose tokenizer has no [MASK] gets one only if the embedding has a spare row
        mask_id = ensure_mask_token(tokenizer, max_vocab_size=model.config.vocab_size)
        if model.config.mask_token_id is None:
            model.config.mask_token_id = mask_id
        elif model.config.mask_token_id != mask_id:
            raise ValueError(f"checkpoint {init_dir}: config.mask_token_id={model.config.mask_token_id} but its "
                             f"tokenizer's [MASK] is {mask_id}")
        # an AR (causal) checkpoint may be adapted with or without the shift; a diffusion checkpoint keeps its own
        if model.config.attention_mode != "causal" and model.config.logit_shift != logit_shift:
            raise ValueError(f"checkpoint {init_dir} is a diffusion model trained with logit_shift="
                             f"{model.config.logit_shift}; continue it with family: masked and objective.logit_shift="
                             f"{str(model.config.logit_shift).lower()}")
        model.config.logit_shift = logit_shift
        model.config.attention_mode = attention_mode
        return model
    if context_needed > max_position_embeddings:
        raise ValueError(f"sequence length {context_needed} exceeds model.max_position_embeddings={max_position_embeddings}")
    config = TextDiffConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings, rope_theta=rope_theta,
        attention_mode=attention_mode, block_size=block_size, time_conditioning=time_conditioning,
        tie_word_embeddings=tie_word_embeddings, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, logit_shift=logit_shift,
    )
    return TextDiffModel(config)


class TextFamily(Family):
    """A family on `TextDiffModel` and a tokenizer. Subclasses set `attention_mode` and build the objective."""

    attention_mode: ClassVar[str]
    """the attention the family trains with when model.attention_mode is not set."""
    likelihood: ClassVar[str] = "exact"
    """how the validation NLL relates to the true one: "exact" or "bound" (an upper bound, printed as PPL <=)."""

    def decoder(self, recipe) -> str:
        return "autoregressive" if (recipe.model.attention_mode or self.attention_mode) == "causal" else "masked"

    def check_recipe(self, recipe) -> None:
        data, model = recipe.data, recipe.model
        if data.images:
            raise ValueError(f"data.images={data.images!r} is image / video data: it needs family: flow "
                             f"(family {self.name} trains on text)")
        if model.attention_mode not in (None, self.attention_mode):
            raise ValueError(f"model.attention_mode={model.attention_mode!r}: family {self.name} trains with "
                             f"{self.attention_mode!r} attention (leave model.attention_mode unset)")
        if not model.init_from:
            key, need = ("data.max_length", data.max_length) if data.task else ("data.seq_len", data.seq_len)
            if need > model.max_position_embeddings:
                raise ValueError(f"{key}={need} exceeds model.max_position_embeddings={model.max_position_embeddings}")

    @abstractmethod
    def build_objective(self, options, model):
        """The family's objective for `model` from the recipe's `objective` section."""

    def build(self, recipe, options, out: Path) -> Built:
        m = recipe.model
        init_dir = None
        if m.init_from:  # 'smollm2' or an HF causal-LM directory is converted once into <output>/converted
            from textdiff.adapters import ensure_textdiff_checkpoint

            init_dir = str(ensure_textdiff_checkpoint(m.init_from, out / "converted"))
        tokenizer, train, valid, collator, meta = build_text_data(recipe, init_dir)
        model = build_text_model(
            tokenizer=tokenizer, attention_mode=m.attention_mode or self.attention_mode,
            logit_shift=getattr(options, "logit_shift", False), init_dir=init_dir,
            context_needed=recipe.data.max_length if recipe.data.task else recipe.data.seq_len,
            hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
            intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
            rope_theta=m.rope_theta, block_size=m.block_size, time_conditioning=m.time_conditioning,
            tie_word_embeddings=m.tie_word_embeddings,
        )
        objective = self.build_objective(options, model)
        return Built(model=model, objective=objective, train_dataset=train, eval_dataset=valid, collator=collator,
                     processing_class=tokenizer, data_meta=meta)

    def after_training(self, model, built: Built, recipe, out: Path) -> dict:
        from textdiff.evaluation import evaluate_task
        from textdiff.pipelines.text import sample_text

        results, s, tokenizer = {}, recipe.sample, built.processing_class
        if recipe.data.task and recipe.eval.task_problems > 0:
            task = get_task(recipe.data.task, **recipe.data.task_kwargs)
            problems = task.generate(recipe.eval.task_problems, "test", recipe.eval.seed)
            scores = evaluate_task(model, tokenizer, task, problems, gen_length=s.gen_length, steps=s.steps,
                                   block_length=s.block_length)
            results["task_eval"] = {"task": recipe.data.task, "split": "test", **scores}
        if s.prompts:
            results["samples"] = sample_text(model, tokenizer, list(s.prompts), gen_length=s.gen_length,
                                             steps=s.steps, block_length=s.block_length,
                                             use_chat_template=s.use_chat_template)
        return results

    def summary(self, results: dict) -> list[str]:
        ev = results["final_eval"]
        kind = "ELBO bound" if self.likelihood == "bound" else "exact"
        lines = [f"valid NLL ({kind}): {ev['eval_loss']:.4f} nats/token = {ev['eval_bits_per_token']:.4f} bits/token, "
                 f"PPL {'<= ' if self.likelihood == 'bound' else ''}{ev['eval_ppl']:.2f} over {ev['eval_tokens']} tokens"]
        if "task_eval" in results:
            te = results["task_eval"]
            lines.append(f"{te['task']} {te['split']} accuracy: {te['accuracy']:.3f} over {te['problems']} problems")
        for sample in results.get("samples", []):
            lines.append(f"\n--- prompt: {sample['prompt']!r}\n{sample['completion']}")
        return lines

    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        from textdiff.pipelines.text import sample_cli

        return sample_cli(checkpoint, config, args)

