from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from crossmodal.beta_mixture import BetaMixture, noise_posterior, normalise_losses
from crossmodal.errors import ConfigError


def _two_betas(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.beta(2, 8, 2000), rng.beta(8, 2, 1000)])
    return x, np.r_[np.zeros(2000), np.ones(1000)]


def test_em_recovers_both_components_of_a_synthetic_loss_distribution():
    x, _ = _two_betas()
    mixture = BetaMixture(iterations=50).fit(x)
    assert mixture.alphas == pytest.approx([2, 8], rel=0.1)
    assert mixture.betas == pytest.approx([8, 2], rel=0.1)
    assert mixture.weights == pytest.approx([2 / 3, 1 / 3], abs=0.02)


def test_posterior_of_the_high_loss_component_separates_noisy_samples():
    x, noisy = _two_betas()
    posterior = BetaMixture().fit(x).posterior(x)
    assert ((posterior > 0.5) == noisy).mean() > 0.93


def test_posterior_equals_bayes_rule_when_not_made_monotone():
    x, _ = _two_betas()
    m = BetaMixture(iterations=20, monotone=False).fit(x)
    points = np.array([0.1, 0.5, 0.9])
    clean = m.weights[0] * stats.beta.pdf(points, m.alphas[0], m.betas[0])
    high = m.weights[1] * stats.beta.pdf(points, m.alphas[1], m.betas[1])
    assert m.posterior(points) == pytest.approx(np.clip(high / (clean + high), 1e-4, 1 - 1e-4), rel=1e-6)


def test_monotone_posterior_never_decreases_with_the_loss():
    x, _ = _two_betas()
    posterior = BetaMixture().fit(x).posterior(np.linspace(0, 1, 500))
    assert np.all(np.diff(posterior) >= 0)


def test_the_high_loss_component_is_component_one_whatever_the_start():
    x, _ = _two_betas()
    m = BetaMixture(alphas=np.array([2.0, 1.0]), betas=np.array([1.0, 2.0]), iterations=30).fit(x)
    assert m.means[1] > m.means[0]


def test_normalise_losses_clips_to_the_5th_and_95th_percentiles():
    losses = np.arange(101, dtype=float)  # percentiles 5 and 95 are 5 and 95
    x = normalise_losses(losses)
    assert x[5] == pytest.approx(1e-3) and x[95] == pytest.approx(1 - 1e-3)
    assert x[50] == pytest.approx(0.5, abs=1e-6)


def test_noise_posterior_flags_the_large_losses():
    rng = np.random.default_rng(1)
    losses = np.concatenate([rng.gamma(2, 0.1, 700), 1 + rng.gamma(2, 0.2, 300)])  # 30% noisy, well separated
    posterior = noise_posterior(losses)
    assert (posterior[700:] > 0.5).mean() == 1.0
    assert (posterior[:700] < 0.5).mean() > 0.95


def test_fit_refuses_values_outside_the_unit_interval():
    with pytest.raises(ConfigError):
        BetaMixture().fit(np.array([0.2, 1.5]))
