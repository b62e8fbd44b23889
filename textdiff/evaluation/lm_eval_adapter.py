"""The lm-evaluation-harness model type "textdiff": any textdiff checkpoint under `lm_eval` (0.4.x).

    python -m textdiff.evaluation.lm_eval_cli --model textdiff --model_args pretrained=CKPT,mc_num=128 \
        --tasks textdiff_arithmetic \
        --include_path $(python -c "import textdiff.evaluation as e; print(e.LM_EVAL_TASKS_DIR)")

(`python -m textdiff.evaluation.lm_eval_cli` is lm_eval's own command line with this model type registered;
the plain `lm_eval` script never imports textdiff, so it does not know `--model textdiff`.)

- `loglikelihood(context, continuation)`: masked checkpoints score the continuation with LLaDA's Monte Carlo
  ELBO (`textdiff.evaluation.metrics.elbo`), the context kept unmasked and only continuation tokens masked
  (stratified mask counts, `mc_num` draws in `batch_size`-row batches, the logit shift of adapted models); causal
  (AR) checkpoints get their exact log-likelihood. `is_greedy` is exact for AR (argmax at every position); for
  masked models it is LLaDA's check: greedy low-confidence decoding of the fully masked continuation, one token
  per step, reproduces it.
- `loglikelihood_rolling(text)`: lm-eval's disjoint rolling windows over the model's context length, each window
  scored as above (bos, else eos, as the first context token), summed.
- `generate_until(context, gen_kwargs)`: `textdiff.generate` (any `sampler`, `cache`, sampler options given as
  model_args) on the prompt encoded as SFT training encodes it, cut at the first `until` string.
"""

from __future__ import annotations

import warnings

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from textdiff.data import SFTCollator
from textdiff.evaluation.metrics.elbo import _check_masked_model, elbo_log_likelihood, load_scorer
from textdiff.pipelines.text import decode_rows
from textdiff.samplers import generate

__all__ = ["TextDiffLM"]

_FLOAT_OPTIONS = ("threshold", "factor", "alg_temp", "cfg_scale")


@register_model("textdiff")
class TextDiffLM(LM):
    """An lm-eval LM over a textdiff checkpoint directory (`pretrained=`) or a (model, tokenizer) pair (`model=`)."""

    def __init__(self, pretrained=None, *, model=None, mc_num: int = 128, batch_size: int | str | None = 32,
                 seed: int = 0, gen_length: int = 32, steps: int | None = None, block_length: int | None = None,
                 sampler: str = "low_confidence", cache: str = "none", temperature: float = 0.0,
                 device: str | None = None, max_batch_size=None, **sampler_options) -> None:
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("give the textdiff model exactly one of pretrained=CKPT_DIR or model=(model, tokenizer)")
        self.model, self.tokenizer = load_scorer(pretrained if model is None else model)
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line asks for cuda unless told otherwise; as its own HF model does, stay on the CPU
            warnings.warn(f"device={device!r} asked for but CUDA is unavailable: evaluating on the CPU", stacklevel=2)
            device = None
        if device:
            self.model.to(device)
        self._device = next(self.model.parameters()).device
        self.causal = getattr(self.model.config, "attention_mode", None) == "causal"
        if not self.causal:
            _check_masked_model(self.model, None)
        self.mc_num = int(mc_num)
        self.mc_batch_size = min(32 if batch_size in (None, "auto") else int(batch_size), self.mc_num)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.gen_length, self.steps = int(gen_length), None if steps is None else int(steps)
        self.block_length = None if block_length is None else int(block_length)
        self.sampler, self.cache, self.temperature = sampler, cache, float(temperature)
        self.sampler_options = {k: float(v) if k in _FLOAT_OPTIONS else v for k, v in sampler_options.items()}
        self.max_length = int(self.model.config.max_position_embeddings)
        tok = self.tokenizer
        self.prefix_token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    # ------------------------------------------------------------------ scoring

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids with bos, continuation ids): the whole string is encoded once and split, as HF lm-eval does."""
        spaces = len(context) - len(context.rstrip())
        if spaces:  # a trailing space of the context belongs to the continuation's first token
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        encode = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]
        whole, ctx = encode(context + continuation), encode(context)
        if whole[: len(ctx)] != ctx:
            cont = encode(continuation)
        else:
            cont = whole[len(ctx):]
        prefix = ([self.prefix_token_id] if self.prefix_token_id is not None else []) + ctx
        return prefix, cont

    @torch.no_grad()
    def _score(self, prefix: list[int], target: list[int]) -> tuple[float, bool]:
        """(log p(target | prefix), greedy) for one pair; the context is cut from the left to fit the model."""
        if not target:
            raise ValueError("lm-eval asked for the log-likelihood of an empty continuation")
        if len(target) >= self.max_length:
            raise ValueError(f"continuation of {len(target)} tokens does not fit the model's {self.max_length} positions")
        prefix = prefix[-(self.max_length - len(target)):]
        device = self._device
        if self.causal:
            ids = torch.tensor([prefix + target], device=device)  # [1, P + L]
            logp = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)  # [P + L, V]
            rows = logp[len(prefix) - 1 : -1]  # [L, V]: position i - 1 predicts token i
            goal = torch.tensor(target, device=device)
            return float(rows.gather(-1, goal[:, None]).sum()), bool((rows.argmax(-1) == goal).all())
        value = elbo_log_likelihood(self.model, prefix, target, mc_num=self.mc_num, batch_size=self.mc_batch_size,
                                    generator=self.generator)
        out = generate(self.model, torch.tensor([prefix], device=device), gen_length=len(target), steps=len(target),
                       block_length=len(target), sampler="low_confidence")
        return value, out.sequences[0, len(prefix):].tolist() == target

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return [self._score(*self._encode_pair(*request.args)) for request in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        if self.prefix_token_id is None:
            raise ValueError("loglikelihood_rolling needs a tokenizer with a bos or eos token to start each text")
        results = []
        for request in requests:
            ids = self.tokenizer(request.args[0], add_special_tokens=False)["input_ids"]
            windows = get_rolling_token_windows(ids, self.prefix_token_id, self.max_length - 1, 1)
            results.append(sum(self._score(*make_disjoint_window(w))[0] for w in windows))
        return results

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        encoder = SFTCollator(self.tokenizer, max_length=self.max_length)
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            gen_length = int(gen_kwargs.get("max_gen_toks", self.gen_length))
            block_length = self.block_length if self.block_length and gen_length % self.block_length == 0 \
                else gen_length
            steps = self.steps if self.steps is not None else gen_length
            temperature = float(gen_kwargs.get("temperature", self.temperature))
            if not gen_kwargs.get("do_sample", True):
                temperature = 0.0
            row = encoder.encode_prompt(context)[-(self.max_length - gen_length):]
            if self.causal:
                text = decode_rows(self.model, self.tokenizer, [row], gen_length=gen_length, steps=steps,
                                   block_length=block_length)[0][0]
            else:
                text = decode_rows(self.model, self.tokenizer, [row], gen_length=gen_length, steps=steps,
                                   block_length=block_length, temperature=temperature, generator=self.generator,
                                   sampler=self.sampler, cache=self.cache, **self.sampler_options)[0][0]
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outputs.append(text)
        return outputs

