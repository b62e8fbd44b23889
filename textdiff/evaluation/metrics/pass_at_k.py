"""Unbiased pass@k of the HumanEval paper (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c of them correct) is
    correct; the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i) avoids huge binomials."""
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer)) and isinstance(k, (int, np.integer))):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (problem i: num_samples[i] samples, num_correct[i] of them correct)."""
    if len(num_samples) != len(num_correct) or not num_samples:
        raise ValueError(
            f"mean_pass_at_k needs equal, non-empty lists; got {len(num_samples)} and {len(num_correct)}"
        )
    return sum(pass_at_k(int(n), int(c), k) for n, c in zip(num_samples, num_correct)) / len(num_samples)
