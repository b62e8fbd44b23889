"""The gen32 parallel-decoding setting decodes the same tokens as before the one-sampler-contract refactor.

`tests/fixtures/sampler_golden.json` holds the sequences and NFE of `textdiff.generate` for every rule x cache mode
(x temperature 0 / 1, steps 32 / 16) and the loop options (CFG, logit shift, left padding, EOS) at gen_length 32
with blocks of 8, recorded with the pre-refactor code by `tests/fixtures/make_sampler_golden.py` on a tiny model
whose weights are a seeded function of the state-dict shapes.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("make_sampler_golden", FIXTURES / "make_sampler_golden.py")
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)

GOLDEN = json.loads((FIXTURES / "sampler_golden.json").read_text())


def _case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.fixture(scope="module")
def golden_model():
    model = maker.build_model()
    # a model change (not a sampler change) would move every case: say so once, here
    fingerprint = torch.tensor(maker.logits_fingerprint(model))
    torch.testing.assert_close(fingerprint, torch.tensor(GOLDEN["fingerprint"]), atol=1e-4, rtol=1e-5,
                               msg="the tiny model's logits changed: the golden tokens no longer test the samplers")
    return model


def test_golden_covers_every_rule_and_cache_mode():
    seen = {(c["case"]["sampler"], c["case"]["cache"]) for c in GOLDEN["cases"]}
    assert seen == {(rule, cache) for rule in maker.RULES for cache in maker.CACHES}
    assert [c["case"] for c in GOLDEN["cases"]] == maker.cases()


@pytest.mark.parametrize("entry", GOLDEN["cases"], ids=[_case_id(c["case"]) for c in GOLDEN["cases"]])
def test_generate_reproduces_golden_tokens(golden_model, entry):
    out = maker.run_case(golden_model, entry["case"])
    assert out["sequences"] == entry["sequences"]
    assert out["nfe"] == entry["nfe"]
