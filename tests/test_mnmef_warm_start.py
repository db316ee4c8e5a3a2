"""Warm start: MNMEF at step 0 is the tuned localized EnKF; old checkpoints load as before."""
import numpy as np
import pytest
import torch

from daviz.experiment import TwinExperiment
from daviz.filters.base import inflate
from daviz.filters.enkf import EnKF, observation_perturbations, perturbed_obs_analysis
from daviz.filters.localization import covariance_localization
from daviz.mnmef.filter import MNMEFFilter
from daviz.mnmef.model import MNMEF, ModelConfig
from daviz.mnmef.warm_start import DEFAULT_FLOOR, tuned_enkf, warm_start
from daviz.systems import get_system


def ensemble(system, B, N, seed=0):
    rng = np.random.default_rng(seed)
    x = system.initial_truth(rng, B)
    return x[:, None, :] + rng.standard_normal((B, N, system.dim)), system.observe(x) + rng.standard_normal((B, system.obs_dim))


def tuned_enkf_analysis(system, sigma_y, E, y, D, N):
    s = tuned_enkf(system.name, sigma_y, N)
    loc = covariance_localization(system, s["radius"]) if system.periodic else (None, None)
    return inflate(perturbed_obs_analysis(E, y, system.obs_idx, sigma_y, D, *loc), s["inflation"])


@pytest.mark.parametrize("name,N", [("l96", 10), ("l96", 40), ("ks", 20), ("l63", 10)])
def test_warm_start_is_the_tuned_enkf(name, N):
    """Same perturbations in, the tuned localized EnKF's analysis out: exact in float64 (with a floor far
    below any weight that matters), to float32 precision in float32."""
    system = get_system(name)
    torch.manual_seed(0)
    model = MNMEF(system, 1.0, ModelConfig(loc_activation="sigmoid")).double()  # the prior set in float64
    used = warm_start(model, N, floor=1e-30)
    assert used["inflation"] > 1 and (used["radius"] is not None) == system.periodic
    E, y = ensemble(system, 3, N)
    D = observation_perturbations(np.random.default_rng(5), 3, N, system.obs_dim, 1.0)
    expected = np.clip(tuned_enkf_analysis(system, 1.0, E, y, D, N), -system.clamp, system.clamp)
    with torch.no_grad():
        got64, _ = model(*(torch.as_tensor(a) for a in (E, y, D)))
        got32, _ = model.float()(*(torch.as_tensor(a, dtype=torch.float32) for a in (E, y, D)))
    np.testing.assert_allclose(got64.numpy(), expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(got32.numpy(), expected, atol=2e-4 * np.abs(expected).max(), rtol=0)


def test_warm_start_g_is_gaspari_cohn_floored():
    system = get_system("l96")
    model = MNMEF(system, 1.0, ModelConfig(loc_activation="sigmoid"))
    used = warm_start(model, 20)
    E, y = ensemble(system, 2, 20)
    with torch.no_grad():
        _, g = model(*(torch.as_tensor(a, dtype=torch.float32) for a in (E, y, np.zeros((2, 20, system.obs_dim)))))
    from daviz.filters.localization import gaspari_cohn
    gc = np.maximum(gaspari_cohn(model.unique_distances, used["radius"]), DEFAULT_FLOOR)
    np.testing.assert_allclose(g.numpy(), np.broadcast_to(gc, g.shape), rtol=1e-5)
    assert g.min() >= DEFAULT_FLOOR * 0.999 and g.max() <= 1.0 + 1e-6


def test_warm_start_same_rrmse_as_enkf_on_a_short_run():
    """With the default floor (1e-3 instead of GC's zeros) the warm-started model tracks like the EnKF."""
    system, N = get_system("l96"), 10
    torch.manual_seed(0)
    model = MNMEF(system, 1.0, ModelConfig(loc_activation="sigmoid"))
    s = warm_start(model, N)
    filters = {"mnmef": MNMEFFilter(model, device="cpu"),
               "enkf": EnKF(system, 1.0, inflation=s["inflation"], radius=s["radius"])}
    res = TwinExperiment(system, 1.0, N, filters, trajectories=8, seed=3).run(150)
    a, b = np.mean(res["mnmef"]), np.mean(res["enkf"])
    assert np.isfinite(a) and np.isfinite(b)
    assert abs(a - b) / b < 0.03, (a, b)


def test_checkpoints_without_warm_start_buffers_load_as_before():
    """A state dict from before the warm start (no loc_prior / fixed_inflation) loads with prior 0, α = 1."""
    system = get_system("l96")
    torch.manual_seed(1)
    model = MNMEF(system, 1.0)
    old = {k: v for k, v in model.state_dict().items() if k not in ("loc_prior", "fixed_inflation")}
    fresh = MNMEF(system, 1.0)
    warm_start(fresh, 40)
    fresh.load_state_dict(old)  # strict
    assert torch.all(fresh.loc_prior == 0) and float(fresh.fixed_inflation) == 1.0
    E, y = ensemble(system, 2, 10)
    args = [torch.as_tensor(a, dtype=torch.float32) for a in (E, y, np.zeros((2, 10, system.obs_dim)))]
    with torch.no_grad():
        torch.testing.assert_close(fresh(*args)[0], model(*args)[0], atol=0, rtol=0)


def test_softmax_warm_start_keeps_gc_shape():
    """2·softmax cannot equal GC (Σg = 2); its warm start is GC's shape rescaled to sum 2."""
    system = get_system("l96")
    model = MNMEF(system, 1.0, ModelConfig(loc_activation="softmax"))
    used = warm_start(model, 40)
    with torch.no_grad():
        g = model.localization_weights(torch.zeros(1, model.config.feature_dim))[0].numpy()
    from daviz.filters.localization import gaspari_cohn
    gc = np.maximum(gaspari_cohn(model.unique_distances, used["radius"]), DEFAULT_FLOOR)
    np.testing.assert_allclose(g, 2 * gc / gc.sum(), rtol=1e-5)


def test_training_from_the_warm_start(tmp_path):
    """`warm_start` in the recipe: the run starts as the EnKF (recorded in the sidecar), and the buffers
    survive a checkpoint and a resume; a fine-tune with warm_start "prior" swaps in its N's prior and inflation,
    with "enkf" also zeroes the heads it trained (and keeps its set transformer)."""
    from daviz.mnmef import checkpoint as ckpt
    from daviz.mnmef.train import TrainConfig, init_model, train

    torch.set_num_threads(1)
    cfg = dict(system="l96", sigma_y=1.0, N=10, trajectories=16, cycles=6, batch_size=8, chains=4, epochs=1,
               warm_start="enkf", model={"feature_dim": 16, "loc_activation": "sigmoid"})
    model, extra = init_model(TrainConfig(**cfg))
    assert extra["warm_start"]["kind"] == "enkf" and extra["warm_start"]["N"] == 10
    assert torch.all(model.gain[-1].weight == 0) and float(model.fixed_inflation) == pytest.approx(tuned_enkf("l96", 1.0, 10)["inflation"])
    meta = train(TrainConfig(**cfg), tmp_path / "pre.pt", progress=False)
    assert meta["warm_start"]["radius"] == tuned_enkf("l96", 1.0, 10)["radius"]
    assert meta["progress"]["trajectory_cycles"] == 2 * 8 * 6
    saved = ckpt.load(tmp_path / "pre.pt")["model"]
    torch.testing.assert_close(saved["loc_prior"], model.loc_prior)
    trained = ckpt.load(tmp_path / "pre.pt")["model"]
    ft = TrainConfig(**{**cfg, "N": 40, "finetune_from": str(tmp_path / "pre.pt"), "model": {}, "warm_start": "prior"})
    tuned, extra = init_model(ft)
    assert extra["warm_start"]["kind"] == "prior"
    assert float(tuned.fixed_inflation) == pytest.approx(tuned_enkf("l96", 1.0, 40)["inflation"])
    assert not torch.equal(tuned.loc_prior, model.loc_prior)
    torch.testing.assert_close(tuned.gain[-1].weight, trained["gain.6.weight"])  # heads as trained
    again, extra = init_model(TrainConfig(**{**ft.__dict__, "warm_start": "enkf"}))
    assert extra["warm_start"]["kind"] == "enkf" and torch.all(again.gain[-1].weight == 0)
    torch.testing.assert_close(again.set_transformer.embed.weight, trained["set_transformer.embed.weight"])


def test_observation_noise_is_redrawn_per_batch():
    """redraw_obs_noise: the step adds σ·z from its key to noise-free h(truth): another key, another draw;
    without it the data carry one fixed draw."""
    from daviz.mnmef.train import TrainConfig, make_data

    base = dict(system="l96", sigma_y=0.7, N=6, trajectories=16, cycles=6, batch_size=8, chains=4, epochs=1)
    truth, clean = make_data(TrainConfig(**base))
    np.testing.assert_array_equal(clean, get_system("l96").observe(truth))
    _, fixed = make_data(TrainConfig(**base, redraw_obs_noise=False))
    assert 0.6 < np.std(fixed - clean) < 0.8

    from daviz.mnmef import noise
    from daviz.mnmef.rollout import DATA_OBS
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, truth, obs, key, backward_scale=None):
            seen[int(key)] = (truth.clone(), obs.clone())
            return torch.zeros(truth.shape[0])

    from daviz.mnmef.step import TrainStep, make_optimizer
    model = MNMEF(get_system("l96"), 0.7, ModelConfig(feature_dim=8))
    opt = make_optimizer(list(model.parameters()), 1e-3, 0.0, torch.device("cpu"))
    st = TrainStep(Spy(), model, opt, torch.as_tensor(truth, dtype=torch.float32),
                   torch.as_tensor(clean, dtype=torch.float32), 6, 8, 16, obs_noise_std=0.7)
    st.set_windows(np.zeros((16, 2), dtype=np.int64))  # every row the same window
    st.step(0, 11, 1e-3)
    st.step(0, 12, 1e-3)
    (t1, o1), (t2, o2) = seen[11], seen[12]
    torch.testing.assert_close(t1, t2)
    z = noise.normal(noise.derive(noise.key_tensor(11), DATA_OBS), o1.shape)
    torch.testing.assert_close(o1, get_system("l96").observe(t1) + 0.7 * z)
    assert not torch.allclose(o1, o2)
