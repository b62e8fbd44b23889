"""`textdiff eval CKPT`: one command for a text checkpoint's numbers, written as JSON and shown as a table.

- likelihood: NLL / PPL on a corpus split, packed into `seq_len`-token blocks as training packs them: the Monte
  Carlo ELBO (LLaDA's estimator, a bound: PPL <=) for a masked-diffusion checkpoint, exact for an AR one;
- task_accuracy: greedy (or any sampler / cache / steps) decoding of a task split, checked by the task's verifier;
- sample quality: samples from prompts scored by generative perplexity under a judge causal LM, distinct-n,
  self-BLEU, repetition rate and (code corpora) the fraction that `ast.parse` after trimming to the last complete
  line; the same figures for real held-out text that starts with the same prompts sit beside them.

What the run that produced a checkpoint trained on (its `results.json` beside the checkpoint: corpus, task, the
`sample` prompts and decoding settings) gives the defaults; flags override them.
"""

from __future__ import annotations

import ast
import json
import math
import random
from contextlib import contextmanager
from pathlib import Path

import torch

from textdiff.evaluation.metrics import (
    distinct_n,
    generative_perplexity,
    load_judge,
    log_likelihood,
    repetition_rate,
    self_bleu,
)

__all__ = ["EVAL_METRICS", "SAMPLE_METRICS", "ast_parse_fraction", "corpus_likelihood", "evaluate_checkpoint",
           "run_config", "sample_quality"]

SAMPLE_METRICS = ("generative_perplexity", "distinct_n", "self_bleu", "repetition_rate", "ast_parse")
"""the metrics computed on samples (and on the held-out reference text)."""
EVAL_METRICS = ("likelihood", "task_accuracy", *SAMPLE_METRICS)
"""what `textdiff eval --metrics` accepts."""
DISTINCT_ORDERS = (1, 2, 3)
"""distinct-n is reported for these n."""


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    """A rich progress bar on stderr; yields `advance()`."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def run_config(checkpoint: str | Path) -> dict:
    """The recipe of the run that wrote `checkpoint` (its `results.json` one level up), or {} when there is none."""
    results = Path(checkpoint).resolve().parent / "results.json"
    if not results.is_file():
        return {}
    try:
        return json.loads(results.read_text()).get("config") or {}
    except (json.JSONDecodeError, OSError):
        return {}


# ------------------------------------------------------------------------------------------------ likelihood


@torch.no_grad()
def corpus_likelihood(model, tokenizer, texts: list[str], *, seq_len: int, max_blocks: int, mc_num: int = 32,
                      batch_size: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """NLL (nats/token) and PPL of `texts` packed into `seq_len`-token blocks (eos between documents, the first
    `max_blocks` blocks). A masked model scores every token of a block with the MC ELBO (`mc_num` draws: a bound);
    an AR or logit-shifted model scores every token after the block's first, which is context only (exact for AR)."""
    from datasets import Dataset

    from textdiff.data import pack_dataset

    causal = model.config.attention_mode == "causal"
    needs_context = causal or bool(getattr(model.config, "logit_shift", False))
    blocks = pack_dataset(Dataset.from_dict({"text": list(texts)}), tokenizer, seq_len)
    if len(blocks) == 0:
        raise ValueError(f"the corpus split holds fewer than {seq_len} tokens: no block to score")
    blocks = blocks.select(range(min(max_blocks, len(blocks))))["input_ids"]
    options = {} if causal else {"mc_num": mc_num, "batch_size": min(batch_size, mc_num),
                                  "generator": torch.Generator().manual_seed(seed)}
    total_nll, total_tokens = 0.0, 0
    with progress_bar(f"likelihood ({'exact' if causal else f'ELBO, mc_num {mc_num}'})", len(blocks), progress) as step:
        for ids in blocks:
            context = 1 if needs_context else 0
            total_nll -= log_likelihood(model, ids[:context], ids[context:], **options)
            total_tokens += len(ids) - context
            step()
    mean_nll = total_nll / total_tokens
    return {"nll": mean_nll, "bits_per_token": mean_nll / math.log(2), "ppl": math.exp(mean_nll),
            "bound": not causal, "mc_num": 0 if causal else mc_num, "blocks": len(blocks), "seq_len": seq_len,
            "tokens": total_tokens}


# ------------------------------------------------------------------------------------------------ samples


def ast_parse_fraction(texts: list[str]) -> float:
    """Fraction of texts that `ast.parse` once cut after their last newline (the last, possibly unfinished, line
    dropped); a text without a complete line does not count as parsed."""
    if not texts:
        raise ValueError("ast_parse_fraction needs at least one text")
    parsed = 0
    for text in texts:
        complete = text[: text.rfind("\n") + 1]
        if not complete.strip():
            continue
        try:
            ast.parse(complete)
        except (SyntaxError, ValueError):  # ValueError: a NUL byte in the text
            continue
        parsed += 1
    return parsed / len(texts)


def text_metrics(texts: list[str], metrics: tuple[str, ...], judge, progress: bool = True) -> dict:
    """The sample metrics of `texts` (a judge is a loaded (model, tokenizer) pair, or None)."""
    out: dict = {}
    if "generative_perplexity" in metrics:
        total_nll, total_tokens = 0.0, 0
        with progress_bar("generative perplexity", len(texts), progress) as step:
            for text in texts:  # one at a time: the bar moves, and the corpus figure is the same
                one = generative_perplexity([text], judge=judge)
                total_nll += one["mean_nll"] * one["num_tokens"]
                total_tokens += one["num_tokens"]
                step()
        out["generative_perplexity"] = math.exp(total_nll / total_tokens)
        out["judge_tokens"] = total_tokens
    if "distinct_n" in metrics:
        for n in DISTINCT_ORDERS:
            try:
                out[f"distinct_{n}"] = distinct_n(texts, n)
            except ValueError:  # every text shorter than n words
                out[f"distinct_{n}"] = None
    if "self_bleu" in metrics:
        out["self_bleu"] = self_bleu(texts) if len(texts) > 1 else None
    if "repetition_rate" in metrics:
        try:
            out["repetition_rate_4"] = repetition_rate(texts, 4)
        except ValueError:
            out["repetition_rate_4"] = None
    if "ast_parse" in metrics:
        out["ast_parse"] = ast_parse_fraction(texts)
    return out


def held_out_continuations(docs: list[str], prompts: list[str], tokenizer, *, per_prompt: int, tokens: int,
                           seed: int = 0) -> list[str]:
    """Real text to set beside the samples: per prompt, `per_prompt` held-out passages that start with the prompt
    at the start of a line, each cut to the prompt plus `tokens` tokens (the model's tokenizer). A prompt found
    nowhere gives passages from random line starts."""
    rng = random.Random(seed)
    out = []
    for prompt in prompts:
        starts = [(d, i) for d, doc in enumerate(docs) for i in _line_starts(doc) if doc.startswith(prompt, i)]
        if not starts:
            starts = [(d, i) for d, doc in enumerate(docs) for i in _line_starts(doc)]
        for d, i in rng.sample(starts, min(per_prompt, len(starts))):
            rest = docs[d][i + len(prompt):]
            ids = tokenizer(rest[: 16 * tokens], add_special_tokens=False)["input_ids"][:tokens]
            out.append(prompt + tokenizer.decode(ids))
    return out


def _line_starts(doc: str) -> list[int]:
    return [0] + [i + 1 for i, ch in enumerate(doc) if ch == "\n" and i + 1 < len(doc)]


def sample_quality(model, tokenizer, prompts: list[str], *, num_samples: int, gen_length: int, steps: int,
                   block_length: int, temperature: float = 0.0, seed: int = 0, metrics: tuple[str, ...],
                   judge=None, reference_docs: list[str] | None = None, progress: bool = True,
                   **generate_options) -> dict:
    """`num_samples` samples per prompt (prompt + completion) and their metrics; with `reference_docs`, the same
    metrics of as many held-out passages starting with the same prompts."""
    from textdiff.evaluation.tasks import complete_prompts

    generator = torch.Generator().manual_seed(seed)
    texts = []
    with progress_bar(f"sampling {num_samples} x {len(prompts)} prompts", len(prompts), progress) as step:
        for prompt in prompts:
            sampled = complete_prompts(model, tokenizer, [prompt], gen_length=gen_length, steps=steps,
                                       block_length=block_length, samples_per_prompt=num_samples,
                                       temperature=temperature,
                                       generator=None if model.config.attention_mode == "causal" else generator,
                                       **generate_options)[0]
            texts += [prompt + completion for completion in sampled]
            step()
    result = {"texts": texts, "metrics": text_metrics(texts, metrics, judge, progress)}
    if reference_docs:
        reference = held_out_continuations(reference_docs, prompts, tokenizer, per_prompt=num_samples,
                                           tokens=gen_length, seed=seed)
        result["reference"] = {"texts": reference, "metrics": text_metrics(reference, metrics, judge, progress)}
    return result


# ------------------------------------------------------------------------------------------------ the command


def task_accuracy(model, tokenizer, task_name: str, task_kwargs: dict, *, split: str, problems: int,
                  gen_length: int, steps: int, block_length: int, batch_size: int = 16, seed: int = 0,
                  progress: bool = True, **generate_options) -> dict:
    """Accuracy on `problems` problems of a task split, decoded in batches of `batch_size` (the verifier decides)."""
    from textdiff.data.tasks import get_task
    from textdiff.evaluation.tasks import evaluate_task

    task = get_task(task_name, **task_kwargs)
    chosen = task.generate(problems, split, seed)
    correct, reward, examples = 0.0, 0.0, []
    with progress_bar(f"{task_name} {split}", len(chosen), progress) as step:
        for start in range(0, len(chosen), batch_size):
            batch = chosen[start : start + batch_size]
            scores = evaluate_task(model, tokenizer, task, batch, gen_length=gen_length, steps=steps,
                                   block_length=block_length, batch_size=batch_size, **generate_options)
            correct += scores["accuracy"] * len(batch)
            reward += scores["mean_reward"] * len(batch)
            examples += scores["examples"][: max(0, 4 - len(examples))]
            for _ in batch:
                step()
    return {"task": task_name, "task_kwargs": task_kwargs, "split": split, "problems": len(chosen),
            "accuracy": correct / len(chosen), "mean_reward": reward / len(chosen), "examples": examples}


def evaluate_checkpoint(checkpoint: str, *, metrics: tuple[str, ...], corpus: str | None = None,
                        corpus_split: str = "valid", valid_percent: float = 2.0, seq_len: int = 128,
                        max_blocks: int = 32, mc_num: int = 32, task: str | None = None,
                        task_kwargs: dict | None = None, task_split: str = "test", problems: int = 50,
                        prompts: list[str] | None = None, num_samples: int = 1, gen_length: int = 64,
                        steps: int = 64, block_length: int = 32, temperature: float = 0.0, judge="smollm2",
                        seed: int = 0, progress: bool = True, **generate_options) -> dict:
    """All the asked-for `metrics` of a text checkpoint as one report dict (see the module docstring)."""
    from textdiff.data import load_corpus
    from textdiff.modeling.checkpoint_io import (
        check_checkpoint,
        family_of_checkpoint,
        load_model,
        load_tokenizer,
    )

    # 1. everything that can be wrong with the input, before any weight loads
    unknown = [m for m in metrics if m not in EVAL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known metrics: {', '.join(EVAL_METRICS)}")
    config = check_checkpoint(checkpoint)
    family = family_of_checkpoint(config)
    if family not in ("masked", "ar"):
        raise ValueError(f"textdiff eval scores masked-diffusion and AR text checkpoints; {checkpoint} is a "
                         f"{family!r} checkpoint")
    causal = config.get("attention_mode") == "causal"
    sample_metrics = tuple(m for m in metrics if m in SAMPLE_METRICS)
    if "likelihood" in metrics and not corpus:
        raise ValueError("the likelihood metric needs a corpus (--corpus stdlib or a path); the checkpoint's run "
                         "names none")
    if "likelihood" in metrics and not causal and config.get("mask_token_id") is None:
        raise ValueError(f"the ELBO needs a masked-diffusion model with a mask token; {checkpoint}'s config has "
                         "mask_token_id None")
    if "task_accuracy" in metrics and not task:
        raise ValueError("the task_accuracy metric needs --task (arithmetic, countdown, sudoku)")
    if sample_metrics and not prompts:
        raise ValueError(f"{', '.join(sample_metrics)}: sample metrics need prompts (--prompt); the checkpoint's "
                         "run names none")
    if task:
        from textdiff.data.tasks import get_task

        get_task(task, **(task_kwargs or {}))  # an unknown task or task option: one line, now
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    if not causal:
        from textdiff.samplers.generate import check_decoding_schedule

        check_decoding_schedule(gen_length, steps, block_length, names=("--gen-length", "--steps", "--block-length"))
    judge_pair = None
    if "generative_perplexity" in metrics:
        if judge in (None, "none"):
            raise ValueError("generative_perplexity needs a judge; --judge none leaves it out of the default metrics")
        judge_pair = load_judge(judge)  # a judge that is not a causal LM: one line, before any sampling

    # 2. the model
    model, tokenizer = load_model(checkpoint).eval(), load_tokenizer(checkpoint)
    report = {"checkpoint": str(checkpoint), "family": family, "metrics": list(metrics)}
    decoding = {"gen_length": gen_length, "steps": steps, "block_length": block_length,
                "temperature": temperature, **({} if causal else generate_options)}
    rule_options = {} if causal else generate_options  # an AR checkpoint decodes greedily: no rule options

    # 3. likelihood on the corpus split
    docs = None
    if "likelihood" in metrics or (sample_metrics and corpus):
        splits = load_corpus(corpus, valid_percent=valid_percent)
        docs = (splits.valid if corpus_split == "valid" else splits.train)["text"]
    if "likelihood" in metrics:
        report["likelihood"] = {"corpus": corpus, "split": corpus_split,
                                **corpus_likelihood(model, tokenizer, docs, seq_len=seq_len, max_blocks=max_blocks,
                                                    mc_num=mc_num, seed=seed, progress=progress)}

    # 4. task accuracy
    if "task_accuracy" in metrics:
        report["task"] = {**task_accuracy(model, tokenizer, task, task_kwargs or {}, split=task_split,
                                          problems=problems, gen_length=gen_length, steps=steps,
                                          block_length=block_length, seed=seed, progress=progress,
                                          temperature=temperature, **rule_options),
                          "decoding": decoding}

    # 5. sample quality, beside the same figures of held-out text
    if sample_metrics:
        report["samples"] = {
            "prompts": list(prompts), "num_samples": num_samples, "decoding": decoding,
            "judge": None if judge_pair is None else (judge if isinstance(judge, str) else type(judge_pair[0]).__name__),
            "reference_source": f"{corpus} {corpus_split} split" if docs is not None else None,
            **sample_quality(model, tokenizer, list(prompts), num_samples=num_samples, gen_length=gen_length,
                             steps=steps, block_length=block_length, seed=seed, metrics=sample_metrics,
                             temperature=temperature, judge=judge_pair, reference_docs=docs, progress=progress,
                             **rule_options),
        }
    return report
