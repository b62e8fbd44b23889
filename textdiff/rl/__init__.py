"""RL for diffusion LMs: coupled-GRPO / d1 on TRL's GRPOTrainer, log-likelihood estimators, rewards, a sandbox."""

from textdiff.rl.estimators import ESTIMATORS, Estimate, coupled_estimate, d1_estimate, row_mask_seeds

__all__ = ["ESTIMATORS", "Estimate", "coupled_estimate", "d1_estimate", "row_mask_seeds"]
