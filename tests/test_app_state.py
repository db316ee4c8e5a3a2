"""The explorer's state and view logic, without a browser."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from daviz.app import state as state_mod
from daviz.app.presets import PRESETS
from daviz.app.state import ExplorerState

FAST = ["EnKF", "LETKF"]  # cheap filters keep these tests quick


@pytest.fixture
def st():
    s = ExplorerState(filters=FAST, N=10)
    s.max_seconds_per_advance = 60.0
    return s


def test_builds_and_step_advances_one_cycle(st):
    assert st.experiment is not None and st.message == ""
    assert st.cycle == 0
    assert st.step() == 1
    assert st.cycle == 1 and st.experiment.cycle == 1 and not st.playing
    assert np.isfinite(st.truth_buf[:, -1]).all()
    assert np.isnan(st.truth_buf[:, 0]).all()  # the window is not full yet
    obs = st.obs_buf[:, -1]
    assert np.isfinite(obs[st.sys.obs_idx]).all() and np.isnan(np.delete(obs, st.sys.obs_idx)).all()
    for label in FAST:
        b = st.buffers[label]
        assert np.isfinite(b.mean[:, -1]).all() and np.isfinite(b.spread[:, -1]).all()
        assert np.allclose(b.error[:, -1], np.abs(b.mean[:, -1] - st.truth_buf[:, -1]))
    assert st.advance(3) == 3 and st.cycle == 4
    assert st.cycles[-1] == 4


def test_setup_changes_restart_and_reset_tuned_defaults(st):
    st.advance(5)
    restarts = st.restarts
    st.radius = 7.5
    st.inflation = 1.3
    assert st.localization == "Gaspari–Cohn" and st.inflation_mode == "manual"
    assert st.experiment.filters["LETKF"].radius == 7.5
    assert st.experiment.filters["EnKF"].inflation == 1.3
    assert st.cycle == 5, "localization/inflation swap filters without restarting"

    st.N = 15
    assert st.cycle == 0 and st.restarts == restarts + 1 and st.experiment.N == 15
    tuned = st._tuned_for("letkf")
    assert st.localization == "tuned" and st.inflation_mode == "tuned"
    assert st.radius == pytest.approx(tuned["radius"]) and st.inflation == pytest.approx(tuned["inflation"])
    assert st.experiment.filters["LETKF"].radius == pytest.approx(tuned["radius"])

    st.advance(2)
    st.seed = 3
    assert st.cycle == 0 and st.experiment.seed == 3
    st.advance(2)
    st.sigma_y = 0.5
    assert st.cycle == 0 and st.experiment.sigma_y == 0.5
    st.advance(2)
    st.filters = ["ESRF"]
    assert st.cycle == 0 and list(st.experiment.filters) == ["ESRF"] and list(st.buffers) == ["ESRF"]

    st.system = "ks"
    assert st.cycle == 0 and st.experiment.system.name == "ks"
    assert st.truth_buf.shape == (128, st.window) and st.param.component.bounds == (0, 127)
    st.advance(1)
    st.system = "l63"
    assert st.experiment.system.name == "l63" and st.localization == "off"
    st.filters = ["LETKF", "EnKF"]  # LETKF on L63 runs as the global ETKF
    assert st.advance(2) == 2 and st.message == ""


def test_reset_replays_the_same_truth(st):
    st.advance(4)
    first = st.truth_buf[:, -4:].copy()
    st.reset()
    assert st.cycle == 0
    st.advance(4)
    np.testing.assert_array_equal(st.truth_buf[:, -4:], first)


def test_play_pause_and_speed(st):
    assert st.cycles_due() == 0  # paused
    st.play()
    assert st.playing
    assert st.cycles_due(now=100.0) == 1  # first tick runs one cycle
    st.speed = 20
    assert st.cycles_due(now=100.25) == 5  # 20 cycles/s × 0.25 s
    assert st.cycles_due(now=200.0) == 10  # a long stall is capped at half a second of work
    st.pause()
    assert not st.playing and st.cycles_due() == 0


def test_forced_divergence_is_flagged_and_others_continue(st):
    st.advance(2)
    st.experiment.states["EnKF"][:] = np.nan  # force the EnKF ensemble non-finite
    st.advance(3)
    assert st.diverged() == {"EnKF": True, "LETKF": False}
    assert st.cycle == 5
    assert "EnKF diverged" in st.status_line()
    assert np.isnan(st.current_rrmse()["EnKF"]) and np.isfinite(st.current_rrmse()["LETKF"])
    assert np.isnan(st.buffers["EnKF"].mean[:, -3:]).all()
    assert np.isfinite(st.buffers["LETKF"].mean[:, -3:]).all()
    st.advance(2)
    assert st.cycle == 7 and st.diverged()["EnKF"]


def test_huge_ensemble_diverges_too(st):
    st.experiment.states["LETKF"][:] = 1e300
    st.advance(2)
    assert st.diverged()["LETKF"] and not st.diverged()["EnKF"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_set_what_they_say(st, name, monkeypatch):
    monkeypatch.setattr(state_mod, "load_mnmef", lambda *a: (None, "no weights in this test"))
    st.preset = name
    settings = PRESETS[name]["settings"]
    for key, value in settings.items():
        assert getattr(st, key) == value, key
    assert st.cycle == 0 and st.preset == name
    lines = PRESETS[name]["explanation"]
    assert len(lines) == 2 and all(len(line) > 20 for line in lines)
    expected = [f for f in settings["filters"] if f != "MNMEF"]
    assert [s.label for s in st.runs] == expected
    if "MNMEF" in settings["filters"]:
        assert "MNMEF unavailable" in st.message


def test_preset_variants_use_their_overrides(st):
    st.apply_preset("Why localization")
    f = st.experiment.filters
    assert f["LETKF"].radius is not None and f["LETKF (no localization)"].radius is None
    st.apply_preset("Why inflation")
    f = st.experiment.filters
    assert f["LETKF (no inflation)"].inflation == 1.0 and f["LETKF"].inflation > 1.0


def test_invalid_inputs_show_a_message_and_never_raise(st):
    st.sigma_y = -1.0
    assert "σ_y" in st.message and st.experiment is None and not st.playing
    assert st.advance(3) == 0 and st.step() == 0
    st.play()  # retries, fails again, stays paused
    assert not st.playing
    st.sigma_y = 0.8
    assert st.message == "" and st.experiment is not None
    st.seed = -5
    assert "seed" in st.message
    st.seed = 1
    st.filters = []
    assert "at least one filter" in st.message
    st.filters = ["EnKF"]
    assert st.advance(1) == 1


def test_mnmef_unavailable_keeps_the_others(monkeypatch):
    monkeypatch.setattr(state_mod, "load_mnmef", lambda *a: (None, "CheckpointError: no weights"))
    s = ExplorerState(filters=["EnKF", "MNMEF"], N=10)
    assert [r.label for r in s.runs] == ["EnKF"]
    assert "MNMEF unavailable: CheckpointError" in s.mnmef_status
    assert s.advance(2) == 2


def test_engine_error_pauses_with_message(st, monkeypatch):
    st.play()

    def boom():
        raise RuntimeError("kaput")

    monkeypatch.setattr(st.experiment, "step", boom)
    assert st.advance(3) == 0
    assert not st.playing and "kaput" in st.message


def test_sessions_are_independent():
    a = ExplorerState(filters=["EnKF"], N=10, seed=1)
    b = ExplorerState(filters=["EnKF"], N=10, seed=1)
    c = ExplorerState(filters=["EnKF"], N=10, seed=2)
    a.advance(3)
    assert b.cycle == 0  # no shared experiment
    b.advance(3)
    np.testing.assert_array_equal(a.truth_buf, b.truth_buf)  # same seed, same truth
    c.advance(3)
    assert not np.allclose(a.truth_buf[:, -3:], c.truth_buf[:, -3:])
    assert a.experiment is not b.experiment and a.buffers["EnKF"].mean is not b.buffers["EnKF"].mean


def test_learned_localization_summary(st):
    class FakeLoc:
        last_localization = None
        unique_distances = np.arange(21)

    b = st.buffers["LETKF"]
    for i in range(4):
        b.loc_history.append(np.linspace(1, 0, 21) + i)
    st.experiment.filters["LETKF"] = type("F", (), {"unique_distances": np.arange(21.0)})()
    x, m, s = st.learned_localization("LETKF")
    assert x.shape == m.shape == s.shape == (21,)
    assert m[0] == pytest.approx(2.5) and s[0] == pytest.approx(np.std([1, 2, 3, 4]))
    gc = st.gaspari_cohn_curve(x)
    assert gc[0] == 1.0 and gc[-1] == 0.0


def test_rolling_window_is_bounded():
    s = ExplorerState(filters=["EnKF"], N=5, window=20)
    s.max_seconds_per_advance = 60.0
    s.advance(35)
    assert s.truth_buf.shape == (40, 20) and s.cycles[0] == 16 and s.cycles[-1] == 35
    assert np.isfinite(s.truth_buf).all()


# ---------------------------------------------------------------------------- the view (no browser)
def test_explorer_view_refreshes_and_rebuilds():
    pn = pytest.importorskip("panel")
    from daviz.app.explorer import Explorer

    e = Explorer(filters=FAST, N=10)
    plots = e.plots
    e.state.advance(3)
    e.refresh()
    assert e.plots is plots  # same system and runs: data swap only
    src, _ = plots.image_sources[0]
    assert src.data["image"][0].shape == (40, e.state.window) and src.data["image"][0].dtype == np.float32
    assert plots.x_range.end == pytest.approx(3.5)
    assert "cycle <span id='daviz-cycle'>3</span>" in e.status.object
    e.state.system = "l63"
    assert e.plots is not plots and not e.plots.image_sources and len(e.plots.series) == 3
    e.state.system = "ks"
    assert e.plots.image_sources[0][0].data["image"][0].shape == (128, e.state.window)
    e.state.sigma_y = -3
    assert e.message.visible and "σ_y" in e.message.object
    assert isinstance(e.template(), pn.template.BootstrapTemplate)


def test_tick_runs_in_a_thread_and_never_overlaps():
    pytest.importorskip("panel")
    from daviz.app.explorer import Explorer

    e = Explorer(filters=FAST, N=10)
    e.state.speed = 60
    e.state.play()

    async def run():
        await asyncio.gather(e._tick(), e._tick(), e._tick())  # the 2nd and 3rd find one running

    asyncio.run(run())
    assert e.ticks == 1 and e.state.cycle == 1
    e._cleanup(None)
    assert e.state.closed and e.state.experiment is None
    asyncio.run(e._tick())  # a tick after the session ended does nothing
    assert e.ticks == 1
