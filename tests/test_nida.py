"""Neural Incremental DA: the MAP step, implicit differentiation through it, observation patterns, weights files,
cycling, and (when shipped) that the trained weights beat their own first guess on held-out windows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from daviz.systems import get_system
from daviz.variational import nida_io
from daviz.variational.experiment import WindowEndExperiment
from daviz.variational.filter import FourDVar, NIDAFilter, NIDAHybrid
from daviz.variational.nida import NIDAConfig, background_trajectory
from daviz.variational.nida_train import (WindowSampler, build_model, own_pattern, seen_pattern, unseen_patterns,
                                          window_loss)

torch.set_num_threads(1)


def _tiny(name, L=2, double=True):
    model = build_model(name, 1.0, NIDAConfig(window=L, increments=3, width=8, depth=2), seed=0)
    return model.double() if double else model


@pytest.mark.parametrize("name", ["l63", "l96"])
def test_map_step_is_the_gaussian_posterior(name):
    """u⁺ and the last level's covariance equal the dense formulas μ + K(y − Hμ), P − KHP with P = CCᵀ + εI,
    for a batch whose members observe different numbers of entries (padding must not leak)."""
    model = _tiny(name)
    B, T, d = 3, model.T, model.d
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(B, T, d, generator=gen, dtype=torch.float64)
    mu, C = model.prior(z, 0.5)
    mask = (torch.rand(B, T, d, generator=gen) < torch.tensor([0.2, 0.5, 0.9])[:, None, None]).double()
    mask[:, 0] = 0
    Y = torch.randn(B, T, d, generator=gen, dtype=torch.float64)
    index, valid = model.gather_observations(mask)
    assert valid.sum(1).tolist() == mask.reshape(B, -1).sum(1).int().tolist()
    r2 = torch.full(index.shape, 0.3, dtype=torch.float64)
    with torch.no_grad():
        u, cov = model.map_update(mu, C, torch.gather(Y.reshape(B, -1), 1, index), index, valid, r2, True)
    n = T * d
    for b in range(B):
        P = C[b] @ C[b].T + model.config.eps * torch.eye(n, dtype=torch.float64)
        obs = torch.nonzero(mask[b].reshape(-1)).flatten()
        H = torch.eye(n, dtype=torch.float64)[obs]
        K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + 0.3 * torch.eye(len(obs), dtype=torch.float64))
        expect = mu[b].reshape(-1) + K @ (Y[b].reshape(-1)[obs] - mu[b].reshape(-1)[obs])
        np.testing.assert_allclose(u[b].reshape(-1).detach().numpy(), expect.detach().numpy(), rtol=1e-9, atol=1e-10)
        post = (P - K @ H @ P)[-d:, -d:]
        np.testing.assert_allclose(cov[b].numpy(), post.detach().numpy(), rtol=1e-8, atol=1e-10)


def test_band_structure_of_the_prior_covariance():
    model = _tiny("l96", L=3)
    z = torch.randn(1, model.T, model.d, dtype=torch.float64)
    _, C = model.prior(z, 1.0)
    P = (C[0] @ C[0].T).detach().numpy()
    T, d = model.T, model.d
    t = np.repeat(np.arange(T), d)
    i = np.tile(np.arange(d), T)
    dt = np.abs(t[:, None] - t[None, :])
    di = np.abs(i[:, None] - i[None, :])
    di = np.minimum(di, d - di)
    outside = (dt > 2 * model.config.band_time) | (di > 2 * model.config.band_space)
    assert np.all(P[outside] == 0) and np.any(P[~outside] != 0)


def test_gradient_through_the_solve_matches_finite_differences():
    """Training differentiates through the MAP solve (implicitly: torch's Cholesky-solve backward); gradcheck
    compares it with finite differences in float64."""
    model = _tiny("l63", L=2)
    batch = WindowSampler("l63", 1.0, 2, 2, seed=0, purpose="train").draw()
    tens = lambda a: torch.as_tensor(a, dtype=torch.float64)
    u0, Y, mask = tens(batch["first_guess"]), tens(batch["Y"]), tens(batch["mask"])
    # differentiate with respect to the first guess (the input every increment passes through)
    assert torch.autograd.gradcheck(lambda x: model.reconstruct(x, Y, mask), (u0.clone().requires_grad_(),),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_patterns_seen_and_unseen_are_disjoint_and_never_observe_the_window_start():
    rng = np.random.default_rng(0)
    for name in ("l63", "l96"):
        system = get_system(name)
        seen = {seen_pattern(system, 4, rng).tobytes() for _ in range(300)}
        assert own_pattern(system, 4).tobytes() in seen  # the system's own pattern is trained on
        for label, m in unseen_patterns(system, 4).items():
            assert m.tobytes() not in seen, label
            assert m[0].sum() == 0 and m.sum() > 0
        assert all(np.frombuffer(s)[: system.dim].sum() == 0 for s in seen)


def test_sampler_uses_the_train_streams_and_backgrounds_vary():
    a = WindowSampler("l96", 1.0, 3, 8, seed=0, purpose="train").draw()
    b = WindowSampler("l96", 1.0, 3, 8, seed=0, purpose="test").draw()
    assert not np.allclose(a["truth"], b["truth"])
    np.testing.assert_allclose(a["first_guess"][:, 0], a["xb"])
    np.testing.assert_allclose(a["first_guess"], background_trajectory(get_system("l96"), a["xb"], 3))
    assert a["a"].max() / a["a"].min() > 2
    assert np.all(a["Y"][a["mask"] == 0] == 0)


def test_weights_roundtrip_and_one_line_errors(tmp_path):
    model = _tiny("l63", double=False)
    path = tmp_path / "nida_l63_sigma1.0_L2.pt"
    nida_io.save(path, model, {"note": "test"})
    loaded, meta = nida_io.load(path, "l63", 1.0)
    assert meta == {"note": "test"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(nida_io.CheckpointError, match="trained for system 'l63', not 'l96'"):
        nida_io.load(path, "l96")
    with pytest.raises(nida_io.CheckpointError, match="sigma_y=1.0, not 0.7"):
        nida_io.load(path, "l63", 0.7)
    bad = tmp_path / "nida_l63_sigma1.0_L3.pt"
    bad.write_bytes(b"not torch")
    with pytest.raises(nida_io.CheckpointError) as err:
        nida_io.load(bad)
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    (tmp_path / "nida_l63_sigma1.0_L2.json").write_text("[1, 2]")
    with pytest.raises(nida_io.CheckpointError, match="not an object"):
        nida_io.load(path)
    assert [e["window"] for e in nida_io.available(tmp_path)] == [2, 3]
    with pytest.raises(nida_io.CheckpointError, match="no NIDA weights for l96"):
        nida_io.load_pretrained("l96", 1.0, tmp_path)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    model = _tiny("l63", L=2, double=False)
    batch = WindowSampler("l63", 1.0, 2, 16, seed=0, purpose="train").draw()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = window_loss(model, batch)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(window_loss(model, batch)[0]) < 0.7 * first


def test_nida_and_hybrid_cycle_in_the_engine():
    system = get_system("l63")
    model = _tiny("l63", L=2, double=False)
    for p in model.parameters():
        p.requires_grad_(False)
    filters = {"nida": NIDAFilter(model), "hybrid": NIDAHybrid(model, FourDVar(system, 1.0, window=2, outer=1,
                                                                                 inner=10, B_scale=0.01))}
    exp = WindowEndExperiment(system, 1.0, 10, filters, trajectories=2, seed=0, purpose="tune")
    exp.run(12)
    assert exp.window_ends == {"nida": 6, "hybrid": 6}
    end = exp.window_end_rrmse()
    assert np.all(np.isfinite(end["nida"])) and np.all(end["hybrid"] < 0.5)
    sp = filters["nida"].spread(exp.states["nida"])
    assert sp.shape == (2, 3) and np.all(np.isfinite(sp)) and np.all(sp > 0)
    with pytest.raises(ValueError):
        NIDAHybrid(model, FourDVar(system, 1.0, window=3))


@pytest.mark.parametrize("name", ["l63", "l96"])
def test_shipped_weights_beat_their_first_guess_on_held_out_windows(name):
    """The shipped model, on 64 test-stream windows with the system's own pattern, reconstructs the window end
    better than the background forecast it starts from (so training did something)."""
    try:
        model, meta = nida_io.load_pretrained(name, 1.0)
    except nida_io.CheckpointError:
        pytest.skip(f"no shipped NIDA weights for {name}")
    assert {"recipe", "training_seconds", "hardware", "code_version"} <= set(meta)
    batch = WindowSampler(name, 1.0, model.config.window, 64, seed=0, purpose="test", pattern="own",
                          a_range=(0.1, 0.3)).draw()
    with torch.no_grad():
        u = model.reconstruct(torch.as_tensor(batch["first_guess"], dtype=torch.float32),
                              torch.as_tensor(batch["Y"], dtype=torch.float32),
                              torch.as_tensor(batch["mask"], dtype=torch.float32)).double().numpy()
    err = np.linalg.norm(u[:, -1] - batch["truth"][:, -1], axis=-1).mean()
    err_fg = np.linalg.norm(batch["first_guess"][:, -1] - batch["truth"][:, -1], axis=-1).mean()
    assert err < 0.8 * err_fg
    side = json.loads(nida_io.sidecar_path(meta_file(name)).read_text())
    assert side["system"] == name and side["sigma_y"] == 1.0


def meta_file(name):
    return next(e["file"] for e in nida_io.available() if e["system"] == name and e["sigma_y"] == 1.0)
