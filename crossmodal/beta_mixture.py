"""Two-component beta mixture fitted by EM to per-sample losses, to tell clean samples from noisy ones.

Reference: Arazo, Ortego, Albert, O'Connor, McGuinness, "Unsupervised Label Noise Modeling and Loss Correction",
ICML 2019. Losses are clipped to their 5th-95th percentiles and scaled into (0, 1); a mixture of a low-loss ("clean")
and a high-loss ("noisy") beta distribution is fitted by EM whose M-step is the *weighted method of moments* (a beta's
maximum-likelihood update has no closed form); the posterior of the high-loss component is each sample's probability of
being noisy. RCAR (crossmodal/methods/rcar.py) uses it on per-pair alignment losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from crossmodal.errors import ConfigError

_EPS = 1e-12  # floor of the responsibilities (Arazo et al.'s code), so an empty component cannot divide by zero


def normalise_losses(losses: np.ndarray, *, low: float = 5.0, high: float = 95.0, margin: float = 1e-3) -> np.ndarray:
    """Scale losses into (0, 1) for the beta mixture, robust to outliers.

    Args:
        losses: float (n,) per-sample losses.
        low, high: percentiles mapped to 0 and 1 (values beyond them are clipped).
        margin: the result is clamped to ``[margin, 1 - margin]``, where beta densities are finite.

    Returns:
        float64 (n,) in ``[margin, 1 - margin]``.
    """
    losses = np.asarray(losses, dtype=np.float64)
    lo, hi = np.percentile(losses, [low, high])
    return np.clip((losses - lo) / (hi - lo + 1e-6), margin, 1.0 - margin)


@dataclass
class BetaMixture:
    """Two-component beta mixture; component 1 is the high-loss (noisy) one.

    Attributes:
        alphas, betas: float64 (2,) shape parameters; initialised to (1, 2) and (2, 1) as Arazo et al. do, so
            component 0 starts with its mass at low loss and component 1 at high loss.
        weights: float64 (2,) mixing proportions pi.
        iterations: EM iterations (10 in Arazo et al.).
        monotone: evaluate the posterior through a 100-bin lookup held at its maximum to the right of its argmax,
            so a very large loss never looks clean again (Arazo et al.'s lookup table).
    """

    alphas: np.ndarray = field(default_factory=lambda: np.array([1.0, 2.0]))
    betas: np.ndarray = field(default_factory=lambda: np.array([2.0, 1.0]))
    weights: np.ndarray = field(default_factory=lambda: np.array([0.5, 0.5]))
    iterations: int = 10
    monotone: bool = True

    def fit(self, x: np.ndarray) -> BetaMixture:
        """Fit by EM to values in (0, 1).

        Args:
            x: float (n,) values in (0, 1), e.g. from ``normalise_losses``.

        Returns:
            self, with component 1 the one of larger mean alpha / (alpha + beta).

        Raises:
            ConfigError: fewer than two values, or values outside [0, 1].
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or len(x) < 2 or x.min() < 0 or x.max() > 1:
            raise ConfigError("a beta mixture needs at least two values in [0, 1]", hint="normalise the losses first")
        x = np.clip(x, 1e-4, 1 - 1e-4)
        self.alphas, self.betas, self.weights = (np.array(v, dtype=np.float64)
                                                 for v in (self.alphas, self.betas, self.weights))
        for _ in range(self.iterations):
            r = self.responsibilities(x)
            for k in range(2):
                self.alphas[k], self.betas[k] = _weighted_moments(x, r[k])
            self.weights = r.sum(axis=1) / r.sum()
        if self.means[0] > self.means[1]:
            self.alphas, self.betas, self.weights = self.alphas[::-1], self.betas[::-1], self.weights[::-1]
        return self

    @property
    def means(self) -> np.ndarray:
        """float64 (2,) component means alpha / (alpha + beta)."""
        return self.alphas / (self.alphas + self.betas)

    def likelihoods(self, x: np.ndarray) -> np.ndarray:
        """float64 (2, n): pi_k * Beta(x; alpha_k, beta_k)."""
        x = np.clip(np.asarray(x, dtype=np.float64), 1e-4, 1 - 1e-4)
        return np.stack([w * stats.beta.pdf(x, a, b) for w, a, b in zip(self.weights, self.alphas, self.betas)])

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        """E-step: float64 (2, n) posterior of each component, floored at 1e-12 and renormalised."""
        r = np.maximum(self.likelihoods(x), _EPS)
        return r / r.sum(axis=0, keepdims=True)

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """P(noisy | x): float64 (n,) posterior of the high-loss component, clamped to [1e-4, 1 - 1e-4]."""
        x = np.asarray(x, dtype=np.float64)
        if not self.monotone:
            return np.clip(self.responsibilities(x)[1], 1e-4, 1 - 1e-4)
        grid = np.linspace(0.0, 1.0, 100)
        table = self.responsibilities(grid)[1]
        peak = int(np.argmax(table))
        table[peak:] = table[peak]
        bins = np.clip((x * 99).astype(int), 0, 99)
        return np.clip(table[bins], 1e-4, 1 - 1e-4)


def noise_posterior(losses: np.ndarray, *, iterations: int = 10) -> np.ndarray:
    """Each sample's probability of being noisy: normalise, fit a two-component beta mixture, read the posterior.

    Args:
        losses: float (n,) per-sample losses (higher = more likely noisy).
        iterations: EM iterations.

    Returns:
        float64 (n,) in [1e-4, 1 - 1e-4].
    """
    x = normalise_losses(losses)
    return BetaMixture(iterations=iterations).fit(x).posterior(x)


def _weighted_moments(x: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Weighted method of moments: the beta with the responsibility-weighted mean and variance of x."""
    mean = float(np.sum(r * x) / np.sum(r))
    var = float(np.sum(r * (x - mean) ** 2) / np.sum(r))
    var = max(var, 1e-8)  # a component collapsed onto one value: keep the shape finite
    alpha = mean * (mean * (1 - mean) / var - 1)
    beta = alpha * (1 - mean) / mean
    return max(alpha, 1e-3), max(beta, 1e-3)
