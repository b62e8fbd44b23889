"""Latent planner + AR decoder (PLANNER, Zhang et al. 2023; LD4LG, Lovelace et al. 2023): `family: planner`.

Three stages, one model class (`PlannerModel`, model_type "textdiff_planner"), chosen by `objective.stage`:
- autoencoder: encoder (bidirectional trunk) -> k tanh / l2 slots -> causal decoder with the slots as a prefix;
  reconstruction CE (+ KL). After training: held-out reconstruction token accuracy and BLEU (greedy).
- planner (`model.init_from` = the autoencoder's final checkpoint): the encoder and decoder are frozen; a
  time-conditioned denoiser trunk learns the slots of a paragraph given the slots of its prompt (VP diffusion,
  x0 / eps / v, P2 weight, condition dropout); sampled with the shared DDIM step, loop and CFG guider.
- ar: the decoder alone on the same paragraphs (the AR baseline at equal size and data).
The decoder is a fresh trunk or a pretrained causal LM (`objective.decoder: smollm2`, frozen if asked).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiff.families.base import Built, Family, register_family
from textdiff.families.planner.data import ParagraphCollator, load_paragraphs, tokenize_paragraphs
from textdiff.families.planner.model import PlannerConfig, PlannerModel
from textdiff.families.planner.objective import (
    AutoencoderObjective,
    DecoderOnlyObjective,
    PlannerObjective,
    PlannerOptions,
)
from textdiff.families.planner.sampling import generate_paragraphs, reconstruct, sample_cli, sample_latents

__all__ = ["PlannerConfig", "PlannerFamily", "PlannerModel", "PlannerOptions", "build_decoder",
           "generate_paragraphs", "reconstruct", "sample_latents"]


def build_decoder(spec: str, *, tokenizer, latent_dim: int, model_cfg, out: Path, adapter_width: int | None = None):
    """(decoder TextDiffModel with a slots -> embedding adapter of input width latent_dim, tokenizer).
    spec "trunk": a fresh causal trunk of the recipe's model size on `tokenizer`; "smollm2" or a textdiff causal
    checkpoint directory: that model (and its tokenizer). A decoder whose width is not `adapter_width` is an error."""
    from textdiff.modeling import TextDiffConfig, TextDiffModel

    if spec == "trunk":
        m = model_cfg
        config = TextDiffConfig(
            vocab_size=len(tokenizer), hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
            intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
            rope_theta=m.rope_theta, attention_mode="causal", tie_word_embeddings=m.tie_word_embeddings,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, mask_token_id=tokenizer.mask_token_id, prefix_dim=latent_dim)
        decoder = None
    else:
        from textdiff.adapters import ensure_textdiff_checkpoint
        from textdiff.modeling.checkpoint_io import load_model, load_tokenizer

        path = ensure_textdiff_checkpoint(spec, out / "converted")
        pretrained = load_model(path, what="objective.decoder")
        if not isinstance(pretrained, TextDiffModel):
            raise ValueError(f"objective.decoder {spec}: a {type(pretrained).__name__}, not a causal text model")
        if adapter_width is not None and adapter_width != pretrained.config.hidden_size:
            raise ValueError(f"objective.decoder {spec} has width {pretrained.config.hidden_size} but the slots -> "
                             f"embedding adapter maps to objective.adapter_width {adapter_width}")
        tokenizer = load_tokenizer(path, what="objective.decoder")
        config = pretrained.config
        config.attention_mode, config.logit_shift, config.prefix_dim = "causal", False, latent_dim
        decoder = TextDiffModel(config)  # the same weights plus the adapter
        missing, unexpected = decoder.load_state_dict(pretrained.state_dict(), strict=False)
        if unexpected or any(not k.startswith("prefix_in.") for k in missing):
            raise ValueError(f"objective.decoder {spec}: weights do not fit (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})")
    if adapter_width is not None and adapter_width != config.hidden_size:
        raise ValueError(f"objective.decoder {spec} has width {config.hidden_size} but the slots -> embedding adapter "
                         f"maps to objective.adapter_width {adapter_width}")
    return decoder, config, tokenizer


@register_family
class PlannerFamily(Family):
    name = "planner"
    config_class = PlannerOptions

    def check_recipe(self, recipe) -> None:
        o, m = recipe.objective, recipe.model
        if recipe.data.task or recipe.data.images:
            raise ValueError("family planner trains on paragraphs of data.corpus (stdlib docstrings or text files); "
                             "data.task / data.images are not supported")
        if m.attention_mode not in (None, "causal"):
            raise ValueError(f"model.attention_mode={m.attention_mode!r}: the planner's decoder is causal "
                             "(leave it unset)")
        if m.init_from and o.stage != "planner":
            raise ValueError(f"model.init_from is the autoencoder a planner stage starts from; objective.stage "
                             f"{o.stage} builds its decoder from objective.decoder")
        if m.lora_rank > 0:
            raise ValueError("model.lora_rank would adapt the encoder too; use objective.freeze_decoder")
        if o.decoder == "trunk" and o.max_tokens + 1 > m.max_position_embeddings - o.num_latents:
            raise ValueError(f"objective.max_tokens {o.max_tokens} + 1 + num_latents {o.num_latents} exceeds "
                             f"model.max_position_embeddings {m.max_position_embeddings}")

    def build(self, recipe, options: PlannerOptions, out: Path) -> Built:
        import torch

        from textdiff.data import load_tokenizer

        o = options
        train_texts, valid_texts, meta = load_paragraphs(recipe.data.corpus, recipe.data.valid_percent, o.min_words)
        if o.stage == "planner" and recipe.model.init_from:
            from textdiff.modeling.checkpoint_io import load_model
            from textdiff.modeling.checkpoint_io import load_tokenizer as load_checkpoint_tokenizer

            ae = load_model(recipe.model.init_from, what="model.init_from")
            if not isinstance(ae, PlannerModel) or getattr(ae.config, "planner_stage", None) != "autoencoder":
                raise ValueError(f"model.init_from {recipe.model.init_from} is not a planner autoencoder checkpoint "
                                 "(objective.stage: autoencoder)")
            tokenizer = load_checkpoint_tokenizer(recipe.model.init_from, what="model.init_from")
            config = ae.config
            config.update({"denoiser_layers": o.denoiser_layers, "denoiser_hidden_size": o.denoiser_hidden_size,
                           "denoiser_heads": o.denoiser_heads, "beta_schedule": o.beta_schedule,
                           "prediction_type": o.prediction_type})
            model = PlannerModel(config)
            missing, unexpected = model.load_state_dict(ae.state_dict(), strict=False)
            if unexpected or any(not k.startswith(("denoiser", "condition_in", "null_condition")) for k in missing):
                raise ValueError(f"model.init_from {recipe.model.init_from}: the autoencoder's weights do not fit")
        else:
            if o.decoder == "trunk":
                tokenizer = load_tokenizer(recipe.tokenizer.name, train_texts=train_texts,
                                           vocab_size=recipe.tokenizer.vocab_size, cache_dir=out / "tokenizer")
            else:
                tokenizer = None
            decoder, decoder_config, tokenizer = build_decoder(
                o.decoder, tokenizer=tokenizer, latent_dim=o.latent_dim, model_cfg=recipe.model, out=out,
                adapter_width=o.adapter_width)
            m = recipe.model
            config = PlannerConfig(
                vocab_size=decoder_config.vocab_size, hidden_size=m.hidden_size, encoder_layers=o.encoder_layers,
                num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
                intermediate_size=m.intermediate_size, max_position_embeddings=o.num_latents + o.max_tokens,
                num_latents=o.num_latents, latent_dim=o.latent_dim, latent_norm=o.latent_norm,
                latent_queries=o.latent_queries, latent_kl=o.kl_weight > 0,
                denoiser_layers=o.denoiser_layers if o.stage == "planner" else 0,
                denoiser_hidden_size=o.denoiser_hidden_size, denoiser_heads=o.denoiser_heads,
                beta_schedule=o.beta_schedule, prediction_type=o.prediction_type,
                ar_decoder=decoder_config.to_dict(), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
            model = PlannerModel(config, decoder=decoder)
            if decoder is not None and o.freeze_decoder:
                for name, p in model.decoder.named_parameters():
                    p.requires_grad_(name.startswith("prefix_in."))
        model.config.planner_stage = o.stage
        if o.stage == "planner":  # the autoencoder is frozen: only the denoiser learns
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(("denoiser", "condition_in", "null_condition")))
            objective = PlannerObjective(beta_schedule=o.beta_schedule, prediction_type=o.prediction_type,
                                         loss_on=o.loss_on, p2_gamma=o.p2_gamma, p2_k=o.p2_k,
                                         cond_dropout=o.cond_dropout)
        elif o.stage == "autoencoder":
            objective = AutoencoderObjective(kl_weight=o.kl_weight, token_noise=o.token_noise)
        else:
            objective = DecoderOnlyObjective()
        train = tokenize_paragraphs(train_texts, tokenizer, o.max_tokens)
        valid = tokenize_paragraphs(valid_texts, tokenizer, o.max_tokens)
        if recipe.data.max_valid_blocks is not None:
            valid = valid[: recipe.data.max_valid_blocks]
        collator = ParagraphCollator(pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                                     else tokenizer.eos_token_id,
                                     eos_token_id=tokenizer.eos_token_id, prompt_tokens=o.prompt_tokens)
        meta.update(train_rows=len(train), valid_rows=len(valid), max_tokens=o.max_tokens, stage=o.stage)
        torch.manual_seed(recipe.run.seed)
        return Built(model=model, objective=objective, train_dataset=train, eval_dataset=valid, collator=collator,
                     processing_class=tokenizer, data_meta=meta)

    def after_training(self, model, built: Built, recipe, out: Path) -> dict:
        """autoencoder: held-out reconstruction (token accuracy, BLEU-4 of the greedy decode from the true slots);
        planner / ar: a few completions of held-out prompts."""
        from textdiff.evaluation.metrics import sentence_bleu

        o, tokenizer = recipe.objective, built.processing_class
        model.eval()
        held_out = [tokenizer.decode(r["input_ids"]) for r in built.eval_dataset[:32]]
        if o.stage == "autoencoder":
            recon = reconstruct(model, tokenizer, held_out, max_tokens=o.max_tokens)
            acc = sum(r["token_accuracy"] for r in recon) / len(recon)
            bleu = sum(sentence_bleu(r["reconstruction_ids"], [r["reference_ids"]]) for r in recon) / len(recon)
            exact = sum(r["reconstruction_ids"] == r["reference_ids"] for r in recon) / len(recon)
            return {"reconstruction": {"paragraphs": len(recon), "token_accuracy": acc, "bleu4": bleu,
                                       "exact": exact, "examples": [{k: r[k] for k in ("reference", "reconstruction")}
                                                                    for r in recon[:4]]}}
        prompts = [tokenizer.decode(r["input_ids"][: o.prompt_tokens]) for r in built.eval_dataset[:3]]
        samples = generate_paragraphs(model, tokenizer, prompts, num_samples=2, steps=recipe.sample.steps,
                                      max_new_tokens=o.max_tokens, temperature=0.0 if o.stage == "planner" else 1.0,
                                      top_p=0.9)
        return {"samples": samples}

    def summary(self, results: dict) -> list[str]:
        ev = results["final_eval"]
        if "eval_mse" in ev:
            lines = [f"valid planner loss (P2-weighted, per sample): {ev['eval_mse']:.4g}"]
        else:
            lines = [(f"valid reconstruction NLL: {ev['eval_loss']:.4f} nats/token, PPL {ev['eval_ppl']:.2f} over "
                      f"{ev['eval_tokens']} tokens")]
        if "reconstruction" in results:
            r = results["reconstruction"]
            lines.append(f"held-out reconstruction ({r['paragraphs']} paragraphs, greedy from the true slots): token "
                         f"accuracy {r['token_accuracy']:.3f}, BLEU-4 {r['bleu4']:.3f}, exact {r['exact']:.3f}")
        for s in results.get("samples", []):
            lines.append(f"\n--- prompt: {s['prompt']!r}\n{s['text']}")
        return lines

    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        return sample_cli(checkpoint, config, args)
