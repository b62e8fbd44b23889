"""Captioned digit images and moving-digit clips: deterministic disjoint splits, captions, value range,
trajectories, and the collator with cached frozen-encoder embeddings."""

import numpy as np
import pytest
import torch

from textdiff.data.images import (
    CaptionedSampleCollator,
    digit_images,
    digits_t2i_dataset,
    from_model_space,
    image_caption,
    moving_digit_clip,
    moving_digits_t2v_dataset,
    to_model_space,
    video_caption,
)


def test_digit_split_is_deterministic_disjoint_and_complete():
    train, _y_train = digit_images("train")
    test, y_test = digit_images("test")
    assert len(train) + len(test) == 1797 and 300 < len(test) < 420
    flat = {img.tobytes() for img in train}
    assert sum(img.tobytes() in flat for img in test) < 5  # load_digits holds a few exact duplicate scans
    again, _ = digit_images("test")
    assert np.array_equal(again, test) and set(y_test.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        digit_images("valid")


def test_t2i_dataset_rows_and_captions():
    ds = digits_t2i_dataset("test")
    images, _labels = digit_images("test")
    assert len(ds) == 3 * len(images)
    row = ds[0]
    assert row["pixel_values"].shape == (1, 8, 8) and row["caption"] == image_caption(int(row["label"]))
    assert image_caption(7) == "a handwritten seven"
    np.testing.assert_allclose(from_model_space(row["pixel_values"][0]), images[0])
    assert to_model_space(np.array([0.0, 16.0])).tolist() == [-1.0, 1.0]


def test_moving_clip_trajectory():
    image = np.zeros((8, 8), dtype=np.float32)
    image[3:5, 3:5] = 16.0
    clip = moving_digit_clip(image, "left", (4, 6), num_frames=4, speed=2)
    cols = [np.nonzero(frame.sum(0))[0].min() for frame in clip]
    rows = [np.nonzero(frame.sum(1))[0].min() for frame in clip]
    assert cols == [9, 7, 5, 3] and rows == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="leaves"):
        moving_digit_clip(image, "right", (0, 4), num_frames=4, speed=2)
    with pytest.raises(ValueError, match="direction"):
        moving_digit_clip(image, "diagonal", (0, 0))


def test_t2v_dataset_captions_match_the_motion():
    ds = moving_digits_t2v_dataset("train", 40, seed=3)
    again = moving_digits_t2v_dataset("train", 40, seed=3)
    assert np.array_equal(ds["pixel_values"], again["pixel_values"])
    for row in ds:
        clip = from_model_space(row["pixel_values"][0])  # [T, 16, 16]
        assert row["caption"] == video_caption(int(row["label"]), row["direction"])
        mass = clip.sum((1, 2))
        com = np.stack([(clip.sum(2) * np.arange(16)).sum(1), (clip.sum(1) * np.arange(16)).sum(1)], 1) / mass[:, None]
        step = {"left": (0, -2), "right": (0, 2), "up": (-2, 0), "down": (2, 0)}[row["direction"]]
        np.testing.assert_allclose(np.diff(com, axis=0), np.tile(step, (3, 1)), atol=1e-4)


class FakeEmbeddings:
    def lookup(self, captions):
        n = len(captions)
        mask = torch.zeros(n, 6, dtype=torch.long)
        for i, c in enumerate(captions):
            mask[i, : len(c.split()) + 2] = 1
        return {"encoder_hidden_states": torch.randn(n, 6, 4), "encoder_attention_mask": mask,
                "pooled_text": torch.randn(n, 4)}


def test_collator_trims_text_to_the_longest_caption():
    ds = digits_t2i_dataset("test", all_templates=False)
    out = CaptionedSampleCollator(FakeEmbeddings())([ds[0], ds[1]])
    assert out["pixel_values"].shape == (2, 1, 8, 8)
    assert out["encoder_hidden_states"].shape == (2, 5, 4) and out["encoder_attention_mask"].shape == (2, 5)


def test_caption_embeddings_cache_round_trip(tmp_path):
    """The frozen MiniLM encodes once; a second CaptionEmbeddings reads the cached file (no encoder)."""
    from textdiff.modeling.text_encoder import CaptionEmbeddings, FrozenTextEncoder

    captions = ["a handwritten seven", "a handwritten two moving up"]
    first = CaptionEmbeddings(captions, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("captions-*.safetensors"))) == 1
    second = CaptionEmbeddings(list(reversed(captions)), cache_dir=tmp_path)
    got = second.lookup(["a handwritten two moving up"])
    fresh = FrozenTextEncoder()(["a handwritten two moving up"])
    torch.testing.assert_close(got["encoder_hidden_states"], fresh["encoder_hidden_states"])
    torch.testing.assert_close(got["pooled_text"], first.lookup(["a handwritten two moving up"])["pooled_text"])
    assert fresh["pooled_text"].shape == (1, 384) and int(fresh["encoder_attention_mask"].sum()) == 8
    with pytest.raises(KeyError, match="not in the cached caption set"):
        first.lookup(["a handwritten nine"])
