"""Captioned images and videos of real handwritten digits (scikit-learn's `load_digits`, 1,797 8x8 scans with
16 grey levels, shipped with scikit-learn: no download).

- Text-to-image: each 8x8 digit with a caption such as "a handwritten seven" (three caption templates).
- Text-to-video: clips of a digit moving across a 16x16 canvas, one of four directions at 2 pixels per frame,
  captioned "a handwritten seven moving left".
The train/test split is by a hash of the scan's index (deterministic, no leakage: video clips are built only
from digits of their own split). Pixels are mapped to [-1, 1] (0 -> -1, 16 -> 1).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch
from datasets import Array3D, Array4D, Dataset, Features, Value

__all__ = [
    "DIGIT_WORDS", "DIRECTIONS", "IMAGE_CAPTION_TEMPLATES", "CaptionedSampleCollator", "digit_images",
    "digits_t2i_dataset", "from_model_space", "image_caption", "moving_digit_clip", "moving_digits_t2v_dataset",
    "to_model_space", "video_caption",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
"""direction -> (row step, column step) per frame, in units of `speed` pixels."""
IMAGE_CAPTION_TEMPLATES = ("a handwritten {}", "a drawing of the digit {}", "the number {} written by hand")
VIDEO_CAPTION_TEMPLATE = "a handwritten {} moving {}"
MAX_PIXEL = 16.0


def image_caption(label: int, template: int = 0) -> str:
    return IMAGE_CAPTION_TEMPLATES[template].format(DIGIT_WORDS[label])


def video_caption(label: int, direction: str) -> str:
    return VIDEO_CAPTION_TEMPLATE.format(DIGIT_WORDS[label], direction)


def to_model_space(pixels: np.ndarray | torch.Tensor):
    """Grey levels 0..16 -> [-1, 1]."""
    return pixels / (MAX_PIXEL / 2) - 1.0


def from_model_space(x: np.ndarray | torch.Tensor):
    """[-1, 1] -> grey levels 0..16 (clipped)."""
    out = (x + 1.0) * (MAX_PIXEL / 2)
    return out.clip(0, MAX_PIXEL) if isinstance(out, np.ndarray) else out.clamp(0, MAX_PIXEL)


def _in_test_split(index: int, test_percent: float) -> bool:
    bucket = int(hashlib.sha256(f"digits:{index}".encode()).hexdigest()[:8], 16) % 10000
    return bucket < test_percent * 100


@lru_cache(maxsize=4)
def digit_images(split: str, test_percent: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 8, 8] float32 grey levels 0..16, labels [N] int64) of one split ("train" | "test")."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    keep = np.array([_in_test_split(i, test_percent) == (split == "test") for i in range(len(digits.target))])
    return digits.images[keep].astype(np.float32), digits.target[keep].astype(np.int64)


def digits_t2i_dataset(split: str, *, test_percent: float = 20.0, all_templates: bool = True) -> Dataset:
    """Every digit of the split once per caption template: columns pixel_values [1, 8, 8] in [-1, 1], caption,
    label."""
    images, labels = digit_images(split, test_percent)
    templates = range(len(IMAGE_CAPTION_TEMPLATES)) if all_templates else range(1)
    rows = [(to_model_space(img)[None], image_caption(int(y), k), int(y)) for k in templates
            for img, y in zip(images, labels)]
    pixels = np.stack([r[0] for r in rows])
    return _dataset({"pixel_values": pixels, "caption": [r[1] for r in rows], "label": [r[2] for r in rows]})


def moving_digit_clip(image: np.ndarray, direction: str, start: tuple[int, int], *, num_frames: int = 4,
                      speed: int = 2, canvas: int = 16) -> np.ndarray:
    """[num_frames, canvas, canvas] grey levels: the 8x8 `image` pasted at `start` (row, column) and moved by
    `speed` pixels per frame in `direction`. Raises if the digit would leave the canvas."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    dr, dc = DIRECTIONS[direction]
    h, w = image.shape
    frames = np.zeros((num_frames, canvas, canvas), dtype=np.float32)
    for f in range(num_frames):
        r, c = start[0] + dr * speed * f, start[1] + dc * speed * f
        if not (0 <= r <= canvas - h and 0 <= c <= canvas - w):
            raise ValueError(f"frame {f}: the digit at ({r}, {c}) leaves the {canvas}x{canvas} canvas")
        frames[f, r: r + h, c: c + w] = image
    return frames


def moving_digits_t2v_dataset(split: str, num_clips: int, *, num_frames: int = 4, speed: int = 2, canvas: int = 16,
                              seed: int = 0, test_percent: float = 20.0) -> Dataset:
    """`num_clips` random clips from the split's digits: columns pixel_values [1, T, canvas, canvas] in [-1, 1],
    caption, label, direction. The digit, direction and the start position (anywhere the whole path fits) are
    drawn with `seed` (offset per split)."""
    images, labels = digit_images(split, test_percent)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    names = list(DIRECTIONS)
    travel = speed * (num_frames - 1)
    room = canvas - images.shape[1]
    if travel > room:
        raise ValueError(f"{num_frames} frames at speed {speed} need {travel} pixels of room, the canvas has {room}")
    clips, captions, digit_labels, directions = [], [], [], []
    for _ in range(num_clips):
        i, direction = int(rng.integers(len(images))), names[int(rng.integers(len(names)))]
        dr, dc = DIRECTIONS[direction]
        # start so that the whole path stays on the canvas
        r0 = int(rng.integers(room + 1)) if dr == 0 else (0 if dr > 0 else travel) + int(rng.integers(room - travel + 1))
        c0 = int(rng.integers(room + 1)) if dc == 0 else (0 if dc > 0 else travel) + int(rng.integers(room - travel + 1))
        clip = moving_digit_clip(images[i], direction, (r0, c0), num_frames=num_frames, speed=speed, canvas=canvas)
        clips.append(to_model_space(clip)[None])
        captions.append(video_caption(int(labels[i]), direction))
        digit_labels.append(int(labels[i]))
        directions.append(direction)
    return _dataset({"pixel_values": np.stack(clips), "caption": captions, "label": digit_labels,
                     "direction": directions})


def _dataset(columns: dict) -> Dataset:
    """A numpy-formatted Dataset whose pixel_values is a fixed-shape Arrow array (Array3D / Array4D): batches come
    out as one contiguous array instead of nested Python lists (4x faster loading for clips)."""
    shape = columns["pixel_values"].shape[1:]
    array = {3: Array3D, 4: Array4D}[len(shape)](shape=shape, dtype="float32")
    features = Features({k: array if k == "pixel_values" else Value("int64" if k == "label" else "string")
                         for k in columns})
    return Dataset.from_dict(columns, features=features).with_format("numpy")


class CaptionedSampleCollator:
    """Batch of {pixel_values, caption} -> pixel_values [B, ...] and the frozen text encoder's cached
    encoder_hidden_states [B, Lt, D] (trimmed to the longest caption in the batch), encoder_attention_mask [B, Lt],
    pooled_text [B, D]."""

    def __init__(self, embeddings):  # a CaptionEmbeddings (modeling/): anything with .lookup(captions)
        self.embeddings = embeddings

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.as_tensor(np.stack([np.asarray(f["pixel_values"], dtype=np.float32) for f in features]))
        text = self.embeddings.lookup([str(f["caption"]) for f in features])
        length = max(int(text["encoder_attention_mask"].sum(1).max()), 1)
        return {
            "pixel_values": pixels,
            "encoder_hidden_states": text["encoder_hidden_states"][:, :length],
            "encoder_attention_mask": text["encoder_attention_mask"][:, :length],
            "pooled_text": text["pooled_text"],
        }
