import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from textdiff import TextDiffConfig, TextDiffModel  # noqa: E402

# Tiny models: one thread is ~100x faster than two contending ones on a shared 2-core machine.
torch.set_num_threads(1)


def tiny_config(**overrides) -> TextDiffConfig:
    kwargs = dict(
        vocab_size=67, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, mask_token_id=66, block_size=4,
    )
    kwargs.update(overrides)
    return TextDiffConfig(**kwargs)


@pytest.fixture
def tiny_model_factory():
    def make(**overrides) -> TextDiffModel:
        torch.manual_seed(0)
        return TextDiffModel(tiny_config(**overrides)).eval()

    return make
