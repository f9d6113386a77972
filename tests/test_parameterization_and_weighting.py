import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.diffusion.parameterization import PARAMETERIZATIONS, eps_from_x, get_parameterization, v_from_x
from progdistill.diffusion.schedules import alpha_sigma, broadcast
from progdistill.diffusion.weighting import (
    WEIGHTINGS, check_combination, get_weighting, per_example_x_mse, weighted_loss,
)


def _batch(seed, logsnr_values):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(len(logsnr_values), 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    logsnr = torch.tensor(logsnr_values, dtype=torch.float64)
    alpha, sigma = alpha_sigma(broadcast(logsnr, x))
    return x, eps, logsnr, alpha, sigma, alpha * x + sigma * eps


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PARAMETERIZATIONS)), st.lists(st.floats(-8, 8), min_size=1, max_size=4),
       st.integers(0, 2**16))
def test_round_trip_to_x(name, logsnrs, seed):
    x, eps, logsnr, alpha, sigma, z = _batch(seed, logsnrs)
    p = get_parameterization(name)
    out = p.ideal(x, eps, alpha, sigma)
    assert out.shape[1] == p.channel_factor * x.shape[1]
    torch.testing.assert_close(p.to_x(out, z, alpha, sigma), x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(eps_from_x(z, x, alpha, sigma), eps, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(v_from_x(z, x, alpha, sigma), alpha * eps - sigma * x, atol=1e-8, rtol=1e-8)


def test_x_v_both_stay_finite_at_t1_but_eps_does_not():
    x, eps, logsnr, alpha, sigma, z = _batch(0, [-20.0, -20.0])
    wrong = torch.randn_like(x)  # an imperfect network output
    for name in ("x", "v"):
        assert get_parameterization(name).to_x(wrong, z, alpha, sigma).abs().max() < 10
    assert get_parameterization("both").to_x(torch.cat([wrong, wrong], 1), z, alpha, sigma).abs().max() < 10
    assert get_parameterization("eps").to_x(wrong, z, alpha, sigma).abs().max() > 1e3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=2, max_size=6), st.integers(0, 2**16))
def test_weightings_equal_their_mse_identities(logsnrs, seed):
    x, eps, logsnr, alpha, sigma, z = _batch(seed, logsnrs)
    x_hat = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    x_mse = per_example_x_mse(x_hat, x)
    eps_mse = per_example_x_mse(eps_from_x(z, x_hat, alpha, sigma), eps)
    v_mse = per_example_x_mse(v_from_x(z, x_hat, alpha, sigma), alpha * eps - sigma * x)
    # flow matching's velocity u = eps - x at the flow point z / (alpha + sigma), time t = sigma / (alpha + sigma)
    u_hat = (z - (alpha + sigma) * x_hat) / sigma
    u_mse = per_example_x_mse(u_hat, eps - x)
    expected = {"constant": x_mse, "snr": eps_mse, "snr_plus1": v_mse, "snr_trunc": torch.maximum(x_mse, eps_mse),
                "velocity": u_mse}
    assert set(expected) == set(WEIGHTINGS)
    for name, per_example in expected.items():
        got = get_weighting(name)(logsnr) * x_mse
        torch.testing.assert_close(got, per_example, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(weighted_loss(x_hat, x, logsnr, name).double(), per_example.mean().float().double(),
                                   rtol=1e-5, atol=1e-8)


def test_loss_averages_over_pixels_not_sums():
    x = torch.zeros(2, 1, 8, 8)
    x_hat = torch.ones(2, 1, 8, 8)
    assert weighted_loss(x_hat, x, torch.zeros(2), "constant").item() == pytest.approx(1.0)


def test_unknown_names_and_forbidden_pair():
    with pytest.raises(ValueError, match="unknown parameterization 'epsilon'.*eps, x, v, both"):
        get_parameterization("epsilon")
    with pytest.raises(ValueError, match="unknown loss weighting 'snr-trunc'"):
        get_weighting("snr-trunc")
    with pytest.raises(ValueError, match="diverges"):
        check_combination("eps", "snr_trunc")
    for p in PARAMETERIZATIONS:
        for w in WEIGHTINGS:
            if (p, w) != ("eps", "snr_trunc"):
                check_combination(p, w)
