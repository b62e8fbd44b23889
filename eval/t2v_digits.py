"""Text-to-video on moving handwritten digits: does each clip show the digit AND the motion the caption names?

Reading a generated clip [T, 16, 16]: in every frame the 8x8 window with the most ink is classified by a
logistic-regression digit classifier (trained on such crops of real clips built from the train split of
`load_digits`) and the log-probabilities are summed over frames; the direction is the sign of the dominant axis of the centre-of-mass displacement from the
first to the last frame. The reader is validated on real held-out clips first. Reports digit, direction and
joint accuracy for several CFG scales (1 = no guidance) from the same initial noise; writes
eval/results/t2v_digits.{json,png}, a frame strip and a GIF.

    textdiff train recipes/video/moving_digits_t2v.yaml
    python eval/t2v_digits.py --checkpoint runs/t2v_digits/final
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import log_softmax

RESULTS = Path(__file__).parent / "results"


def ink_crops(clips: np.ndarray) -> np.ndarray:
    """[N, T, H, W] -> [N, T, 64]: in every frame the 8x8 window holding the most ink."""
    n, t = clips.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(clips, (8, 8), axis=(2, 3)).reshape(n, t, -1, 64)
    best = windows.sum(-1).argmax(-1)  # [N, T]
    return windows[np.arange(n)[:, None], np.arange(t)[None], best]


def frame_classifier(num_frames: int, canvas: int):
    """Logistic regression on the ink crops of 3,000 real TRAIN clips (the crops are not centred like load_digits'
    scans, so a classifier of the raw scans reads them badly)."""
    from sklearn.linear_model import LogisticRegression

    from textdiff.data.images import from_model_space, moving_digits_t2v_dataset

    train = moving_digits_t2v_dataset("train", 3000, num_frames=num_frames, canvas=canvas, seed=7)
    crops = ink_crops(from_model_space(np.asarray(train["pixel_values"])[:, 0]))
    labels = np.repeat(np.asarray(train["label"]), num_frames)
    return LogisticRegression(max_iter=5000, C=0.1).fit(crops.reshape(-1, 64), labels)


def read_clips(clf, clips: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """clips [N, T, H, W] grey levels 0..16 -> (digit [N], direction [N], displacement [N, 2] in pixels)."""
    n, t, h, w = clips.shape
    crops = ink_crops(clips)  # [N, T, 64]
    # log-softmax of the decision function: sklearn's predict_log_proba is log(predict_proba), -inf on underflow
    log_probs = log_softmax(clf.decision_function(crops.reshape(n * t, 64)), axis=1).reshape(n, t, 10).sum(1)
    digits = log_probs.argmax(1)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None]
    mass = clips.sum(axis=(2, 3)) + 1e-6  # [N, T]
    com = np.stack([(clips * rows).sum(axis=(2, 3)) / mass, (clips * cols).sum(axis=(2, 3)) / mass], -1)  # [N, T, 2]
    disp = com[:, -1] - com[:, 0]  # [N, 2] (row, column)
    directions = [("right" if dc > 0 else "left") if abs(dc) > abs(dr) else ("down" if dr > 0 else "up")
                  for dr, dc in disp]
    return digits, directions, disp


def score(clf, videos: torch.Tensor, labels: np.ndarray, directions: list[str]) -> dict:
    from textdiff.data.images import from_model_space

    clips = from_model_space(videos[:, 0].numpy())  # [N, T, H, W]
    digits, moved, disp = read_clips(clf, clips)
    digit_ok = digits == labels
    dir_ok = np.array([a == b for a, b in zip(moved, directions)])
    both = digit_ok & dir_ok
    wanted = np.array(directions)
    return {"digit_accuracy": float(digit_ok.mean()), "direction_accuracy": float(dir_ok.mean()),
            "both_accuracy": float(both.mean()),
            "mean_displacement_px": float(np.abs(disp).max(1).mean()),
            "both_accuracy_per_digit": {int(d): float(both[labels == d].mean()) for d in np.unique(labels)},
            "both_accuracy_per_direction": {str(r): float(both[wanted == r].mean()) for r in np.unique(wanted)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/t2v_digits/final")
    parser.add_argument("--per-caption", type=int, default=5, help="clips per caption (40 captions)")
    parser.add_argument("--scales", default="1,2,4,6", help="CFG scales (standard convention, 1 = off)")
    parser.add_argument("--cfg", type=float, default=4.0, help="CFG scale of the solver comparison and the strip")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--solvers", default="euler_10,heun_14,dpmpp_2m_sd3_10,dpmpp_2m_10",
                        help="solver comparison at --cfg: name_steps, comma-separated ('' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "t2v_digits"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModel

    import textdiff  # noqa: F401  (registers the Auto classes)
    from textdiff.data.images import DIRECTIONS, moving_digits_t2v_dataset, video_caption
    from textdiff.modeling.text_encoder import CaptionEmbeddings
    from textdiff.pipelines.visual import sample_visual, save_video

    model = AutoModel.from_pretrained(args.checkpoint).eval()
    frames = model.config.num_frames
    clf = frame_classifier(frames, model.config.sample_size)
    real = moving_digits_t2v_dataset("test", 400, num_frames=frames, canvas=model.config.sample_size, seed=123)
    real_scores = score(clf, torch.as_tensor(np.asarray(real["pixel_values"])), np.asarray(real["label"]),
                        list(real["direction"]))
    print(f"reader on real test clips: {real_scores}")

    pairs = [(d, r) for d in range(10) for r in DIRECTIONS]
    prompts = [video_caption(d, r) for d, r in pairs]
    embeddings = CaptionEmbeddings(prompts, encoder=model.config.text_encoder, max_length=model.config.max_text_length)
    labels = np.repeat([d for d, _ in pairs], args.per_caption)
    directions = [r for _, r in pairs for _ in range(args.per_caption)]

    def run(**options):
        start = time.time()
        videos = sample_visual(model, prompts, num_per_prompt=args.per_caption, seed=args.seed, embeddings=embeddings,
                               **options)
        result = score(clf, videos, labels, directions)
        result["seconds"] = round(time.time() - start, 2)
        return result, videos

    sweep, kept = {}, {}
    for w in [float(s) for s in args.scales.split(",")]:
        sweep[w], videos = run(steps=args.steps, solver="euler", guidance_scale=w)
        kept[w] = videos
        print(f"cfg {w:>4}: digit {sweep[w]['digit_accuracy']:.3f}  direction {sweep[w]['direction_accuracy']:.3f}  "
              f"both {sweep[w]['both_accuracy']:.3f}")
    solvers = {}
    for name in filter(None, args.solvers.split(",")):
        solver, steps = name.rsplit("_", 1)[0], int(name.rsplit("_", 1)[1])
        solvers[name], _ = run(steps=steps, solver=solver, guidance_scale=args.cfg)
        solvers[name]["nfe_per_sample"] = 2 * (2 * steps - 1 if solver == "heun" else steps)
        print(f"{name}: both {solvers[name]['both_accuracy']:.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one clip per caption of 8 captions (2 per direction), CFG and no CFG
    show = [prompts.index(video_caption(d, r)) * args.per_caption for d, r in
            ((3, "right"), (7, "left"), (0, "up"), (4, "down"), (5, "right"), (2, "left"), (9, "up"), (6, "down"))]
    files = save_video(kept[args.cfg][show], f"{out}_cfg{args.cfg:g}.gif", f"{out}_strip_cfg{args.cfg:g}.png")
    files += save_video(kept[1.0][show], None, f"{out}_strip_nocfg.png")
    results = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "checkpoint": args.checkpoint,
        "clips_per_caption": args.per_caption,
        "captions": len(prompts),
        "reader": {"frame_classifier": "LogisticRegression(C=0.1) on max-ink 8x8 crops of 3000 real train clips",
                   "on_real_test_clips": real_scores},
        f"cfg_sweep_euler_{args.steps}": {str(k): v for k, v in sweep.items()},
        f"solvers_cfg{args.cfg:g}": solvers,
        "files": [str(f) for f in files],
        "strip_layout": "rows: 'a handwritten three moving right', seven left, zero up, four down, five right, "
                        "two left, nine up, six down; frames left to right",
    }
    Path(f"{out}.json").write_text(json.dumps(results, indent=2))
    plot(sweep, real_scores, Path(f"{out}.png"))
    print(f"wrote {out}.json, {out}.png, {', '.join(map(str, files))}")
    return 0


def plot(sweep: dict, real: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    scales = sorted(sweep)
    for key, label in (("digit_accuracy", "digit"), ("direction_accuracy", "direction"), ("both_accuracy", "both")):
        line = ax.plot(scales, [sweep[w][key] for w in scales], "o-", label=f"{label} matches caption")[0]
        ax.axhline(real[key], color=line.get_color(), ls="--", alpha=0.5)
    ax.set_xlabel("CFG scale w (1 = no guidance)")
    ax.set_ylabel("fraction of clips")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("text-to-video moving digits (dashed: reader on real clips)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
