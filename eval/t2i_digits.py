"""Text-to-image on real handwritten digits: does the DiT draw the digit the caption names?

A logistic-regression digit classifier (scikit-learn, trained on the train split of `load_digits`, checked on
the test split) reads every generated 8x8 image; we report the fraction classified as the prompted digit for
several CFG scales (1 = no guidance), solvers / step counts and Imagen dynamic thresholding, all from the same
initial noise. Writes eval/results/t2i_digits.{json,png} and sample grids.

    textdiff train recipes/image/digits_t2i.yaml
    python eval/t2i_digits.py --checkpoint runs/t2i_digits/final
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def digit_classifier():
    """(classifier on grey levels 0..16 flattened, its test accuracy on real held-out digits)."""
    from sklearn.linear_model import LogisticRegression

    from textdiff.data.images import digit_images

    x_train, y_train = digit_images("train")
    x_test, y_test = digit_images("test")
    clf = LogisticRegression(max_iter=5000, C=0.1).fit(x_train.reshape(len(x_train), -1), y_train)
    return clf, float(clf.score(x_test.reshape(len(x_test), -1), y_test))


def score(clf, images: torch.Tensor, labels: np.ndarray) -> dict:
    from textdiff.data.images import from_model_space

    pixels = from_model_space(images[:, 0].numpy()).reshape(len(images), -1)
    probs = clf.predict_proba(pixels)
    pred = probs.argmax(1)
    per_digit = {int(d): float((pred[labels == d] == d).mean()) for d in range(10)}
    return {"accuracy": float((pred == labels).mean()), "mean_prob_of_prompted_digit": float(probs[np.arange(len(labels)), labels].mean()),
            "per_digit_accuracy": per_digit,
            "within_digit_pixel_std": float(np.mean([pixels[labels == d].std(0).mean() for d in range(10)]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/t2i_digits/final")
    parser.add_argument("--per-digit", type=int, default=30, help="samples per digit and setting")
    parser.add_argument("--scales", default="1,1.5,2,3,4,6", help="CFG scales (standard convention, 1 = off)")
    parser.add_argument("--cfg", type=float, default=4.0, help="CFG scale of the solver comparison and the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "t2i_digits"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModel

    import textdiff  # noqa: F401  (registers the Auto classes)
    from textdiff.data.images import DIGIT_WORDS, image_caption
    from textdiff.modeling.text_encoder import CaptionEmbeddings
    from textdiff.samplers.guidance import ClassifierFreeGuidance, dynamic_threshold
    from textdiff.pipelines.visual import sample_visual, save_image_grid

    clf, real_accuracy = digit_classifier()
    model = AutoModel.from_pretrained(args.checkpoint).eval()
    prompts = [image_caption(d) for d in range(10)]
    embeddings = CaptionEmbeddings(prompts, encoder=model.config.text_encoder, max_length=model.config.max_text_length)
    labels = np.repeat(np.arange(10), args.per_digit)

    def run(**options) -> tuple[dict, torch.Tensor]:
        start = time.time()
        images = sample_visual(model, prompts, num_per_prompt=args.per_digit, seed=args.seed, embeddings=embeddings,
                               **options)
        result = score(clf, images, labels)
        result["seconds"] = round(time.time() - start, 2)
        return result, images

    # 1. CFG sweep (Euler, 28 steps, shift 1: the SD3 default step count)
    sweep, grids = {}, {}
    for w in [float(s) for s in args.scales.split(",")]:
        sweep[w], images = run(steps=28, solver="euler", guidance_scale=w)
        grids[w] = images
        print(f"cfg {w:>4}: accuracy {sweep[w]['accuracy']:.3f}  within-digit std {sweep[w]['within_digit_pixel_std']:.2f}")
    # 2. solvers and step counts at the chosen CFG scale (NFE = model calls per sample, x2 for CFG)
    solvers = {}
    for name, solver, steps in (("euler_10", "euler", 10), ("euler_28", "euler", 28), ("heun_14", "heun", 14),
                                ("dpmpp_2m_sd3_10", "dpmpp_2m_sd3", 10), ("dpmpp_2m_sd3_28", "dpmpp_2m_sd3", 28),
                                ("dpmpp_2m_10", "dpmpp_2m", 10), ("unipc_10", "unipc", 10),
                                ("euler_28_shift3", "euler", 28)):
        shift = 3.0 if name.endswith("shift3") else 1.0
        solvers[name], _ = run(steps=steps, solver=solver, guidance_scale=args.cfg, shift=shift)
        solvers[name]["nfe_per_sample"] = 2 * (2 * steps - 1 if solver == "heun" else steps)
        print(f"{name:>16}: accuracy {solvers[name]['accuracy']:.3f}")
    # 3. guidance variants at the same scale
    variants = {}
    for name, guidance, hook in (
        ("cfg", ClassifierFreeGuidance(scale=args.cfg), None),
        ("cfg+dynamic_threshold_p0.995", ClassifierFreeGuidance(scale=args.cfg), dynamic_threshold),
        ("cfg+rescale_0.7", ClassifierFreeGuidance(scale=args.cfg, rescale=0.7), None),
        ("cfg_zero_star", ClassifierFreeGuidance(scale=args.cfg, zero_star=True, zero_init_steps=1), None),
        ("cfg_interval_0.0-0.6", ClassifierFreeGuidance(scale=args.cfg, stop=0.6), None),
    ):
        variants[name], _ = run(steps=28, solver="euler", guidance=guidance, x0_hook=hook)
        print(f"{name:>30}: accuracy {variants[name]['accuracy']:.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = min(10, args.per_digit)
    pick = torch.cat([torch.arange(d * args.per_digit, d * args.per_digit + cols) for d in range(10)])
    grid_cfg = save_image_grid(grids[args.cfg][pick], f"{out}_grid_cfg{args.cfg:g}.png", nrow=cols)
    grid_plain = save_image_grid(grids[1.0][pick], f"{out}_grid_nocfg.png", nrow=cols)
    results = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "checkpoint": args.checkpoint,
        "prompts": prompts,
        "digit_words": list(DIGIT_WORDS),
        "samples_per_digit": args.per_digit,
        "classifier": {"model": "LogisticRegression(C=0.1) on load_digits train split",
                       "test_accuracy_on_real_digits": real_accuracy},
        "cfg_sweep_euler_28": {str(k): v for k, v in sweep.items()},
        f"solvers_cfg{args.cfg:g}": solvers,
        f"guidance_variants_cfg{args.cfg:g}_euler_28": variants,
        "grids": {"cfg": str(grid_cfg), "no_cfg": str(grid_plain),
                  "layout": f"row d = prompt 'a handwritten <d>', {cols} samples per row"},
    }
    Path(f"{out}.json").write_text(json.dumps(results, indent=2))
    plot(results, sweep, solvers, Path(f"{out}.png"), args.cfg)
    print(f"wrote {out}.json, {out}.png, {grid_cfg}, {grid_plain}")
    return 0


def plot(results: dict, sweep: dict, solvers: dict, path: Path, cfg: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    scales = sorted(sweep)
    a.plot(scales, [sweep[w]["accuracy"] for w in scales], "o-", label="prompted digit recognised")
    a.axhline(results["classifier"]["test_accuracy_on_real_digits"], color="gray", ls="--",
              label="classifier on real test digits")
    a.axhline(0.1, color="lightgray", ls=":", label="chance")
    a.set_xlabel("CFG scale w (1 = no guidance)")
    a.set_ylabel("accuracy")
    a.set_ylim(0, 1.02)
    a.grid(alpha=0.3)
    a.legend(loc="lower right")
    a.set_title("text-to-image digits: accuracy vs CFG (Euler, 28 steps)")
    names = list(solvers)
    b.bar(range(len(names)), [solvers[n]["accuracy"] for n in names], color="tab:green")
    b.set_xticks(range(len(names)), [f"{n}\n{solvers[n]['nfe_per_sample']} NFE" for n in names], fontsize=7)
    b.set_ylim(0, 1.02)
    b.set_title(f"solvers at CFG {cfg:g}")
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
