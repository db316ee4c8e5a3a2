"""Counter-based rollout noise: a pure function of (key, index), standard normal, independent across keys."""
import numpy as np
import pytest
import torch

from daviz.mnmef import noise
from daviz.mnmef.rollout import centred_perturbations, draw
from daviz.systems import get_system


def test_pure_function_of_key_and_index():
    k = noise.key_tensor(123)
    a = noise.normal(k, (4, 5, 6))
    assert torch.equal(a, noise.normal(noise.key_tensor(123), (4, 5, 6)))
    assert torch.equal(a.reshape(-1)[:30], noise.normal(k, (30,)))  # element i does not depend on the shape
    assert not torch.equal(a, noise.normal(noise.key_tensor(124), (4, 5, 6)))
    assert noise.derive(7, 1, 2) == int(noise.derive(noise.key_tensor(7), 1, 2))  # host and device agree
    assert len({noise.derive(7, s) for s in range(100)}) == 100


@pytest.mark.parametrize("key", [0, 1, 2**31 + 5, 2**32 - 1])
def test_standard_normal_moments(key):
    z = noise.normal(noise.key_tensor(key), (1_000_000,)).double().numpy()
    n = z.size
    assert abs(z.mean()) < 5 / n**0.5            # 5 standard errors
    assert abs(z.var() - 1) < 5 * (2 / n) ** 0.5
    assert abs((z**4).mean() - 3) < 5 * (96 / n) ** 0.5
    assert abs((z > 2).mean() - 0.02275) < 5 * (0.0228 / n) ** 0.5  # a tail
    assert np.isfinite(z).all() and np.abs(z).max() < 6


def test_streams_uncorrelated():
    zs = np.stack([noise.normal(noise.key_tensor(noise.derive(9, s)), (20_000,)).numpy() for s in range(20)])
    c = np.corrcoef(zs)
    assert np.abs(c - np.eye(20)).max() < 5 / 20_000**0.5
    z = zs[0]
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / 20_000**0.5  # neighbouring indices


def test_rollout_draws():
    system = get_system("l96")
    z0, r, q = draw(system, 0.7, noise.key_tensor(5), B=3, N=4, J=6)
    assert z0.shape == (3, 4, 40) and r.shape == (6, 3, 4, 10) and q is None
    torch.testing.assert_close(r.mean(-2), torch.zeros(6, 3, 10), atol=1e-6, rtol=0)  # centred over members
    z = torch.randn(2, 5, 3)
    torch.testing.assert_close(centred_perturbations(z, 2.0), 2.0 * (5 / 4) ** 0.5 * (z - z.mean(-2, keepdim=True)))
