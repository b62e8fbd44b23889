"""lm_eval's loglikelihood ranking through the textdiff model type picks the right answer on a task a trained tiny
model must get right: a masked model SFT'd (the real objective, 300 steps) on a fixed key -> value lookup, then a
local multiple-choice YAML over every value as a choice; chance is 1/8, the trained model must score 1.0 and an
untrained one must not."""

from __future__ import annotations

import json

import lm_eval
import torch
from lm_eval.tasks import TaskManager
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

import textdiff.evaluation.lm_eval_adapter  # noqa: F401  (registers the "textdiff" model type)
from textdiff import TextDiffConfig, TextDiffModel
from textdiff.objectives.masked import MaskedDiffusionObjective

N_KEYS = 8
VALUE_OF = [3, 7, 0, 5, 1, 6, 4, 2]  # key i -> value VALUE_OF[i]: no key maps to its own index

TASK_YAML = """
task: textdiff_toy_lookup
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{key}}}} ="
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _tokenizer() -> PreTrainedTokenizerFast:
    words = ["<eos>", "[MASK]", "="] + [f"k{i}" for i in range(N_KEYS)] + [f"v{i}" for i in range(N_KEYS)]
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    raw.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>", mask_token="[MASK]")


def _model(tokenizer, trained: bool) -> TextDiffModel:
    torch.manual_seed(0)
    model = TextDiffModel(TextDiffConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=16,
                                         mask_token_id=tokenizer.mask_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    if trained:
        # the sequences lm_eval will score: eos (the adapter's first context token), key, "=", value
        rows = [tokenizer(f"<eos> k{i} = v{VALUE_OF[i]}", add_special_tokens=False)["input_ids"] for i in range(N_KEYS)]
        input_ids = torch.tensor(rows)  # [8, 4]
        prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        prompt_mask[:, :3] = True  # SFT: only the value is noised and scored
        objective = MaskedDiffusionObjective(mask_token_id=tokenizer.mask_token_id, normalization="answer")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(300):
            loss = objective(model, {"input_ids": input_ids, "prompt_mask": prompt_mask}, generator=generator).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _accuracy(tmp_path, trained: bool) -> float:
    tokenizer = _tokenizer()
    ckpt = tmp_path / ("trained" if trained else "untrained")
    _model(tokenizer, trained).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    data = tmp_path / "lookup.jsonl"
    data.write_text("".join(json.dumps({"key": f"k{i}", "choices": [f"v{j}" for j in range(N_KEYS)],
                                        "label": VALUE_OF[i]}) + "\n" for i in range(N_KEYS)))
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "toy_lookup.yaml").write_text(TASK_YAML.format(data=data))
    out = lm_eval.simple_evaluate(model="textdiff", model_args=f"pretrained={ckpt},mc_num=4,batch_size=4",
                                  tasks=["textdiff_toy_lookup"],
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    result = out["results"]["textdiff_toy_lookup"]
    assert result["sample_len"] == N_KEYS
    return result["acc,none"]


def test_loglikelihood_ranking_picks_the_learned_answer(tmp_path):
    assert _accuracy(tmp_path, trained=True) == 1.0
    assert _accuracy(tmp_path, trained=False) < 0.5  # an untrained model is near chance (1/8)
