"""lm_eval's own command line with the "textdiff" model type registered (the `lm_eval` script never imports
textdiff, so it does not know `--model textdiff`):

    python -m textdiff.evaluation.lm_eval_cli --model textdiff --model_args pretrained=CKPT,mc_num=128 \
        --tasks textdiff_arithmetic --include_path "$(python -c 'import textdiff.evaluation as e; print(e.LM_EVAL_TASKS_DIR)')"
"""

import textdiff.evaluation.lm_eval_adapter  # noqa: F401  (registers the "textdiff" model type)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
