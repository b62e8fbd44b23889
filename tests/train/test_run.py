"""train_from_recipe wiring: starting from a checkpoint whose tokenizer has no [MASK] and no spare row."""

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from textdiff.config import load_recipe
from textdiff.modeling import TextDiffConfig, TextDiffModel
from textdiff.train.run import train_from_recipe


def test_init_from_a_checkpoint_without_room_for_mask_is_a_clear_error(tmp_path):
    vocab = {str(i): i for i in range(10)} | {"Compute": 10, "+": 11, "-": 12, "*": 13, ".": 14, "<eos>": 15}
    raw = Tokenizer(WordLevel(vocab, unk_token="<eos>"))
    raw.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    ckpt = tmp_path / "ckpt"
    tokenizer.save_pretrained(ckpt)
    TextDiffModel(TextDiffConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(ckpt)
    recipe = load_recipe("recipes/masked/arithmetic_sft.yaml", [f"model.init_from={ckpt}", f"run.output_dir={tmp_path}/run",
                                                                 "trainer.max_steps=1", "trainer.report_to=[]"])
    with pytest.raises(ValueError, match=r"no room for \[MASK\]"):
        train_from_recipe(recipe)
