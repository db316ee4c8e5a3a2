"""The explorer's state, recorder, wire format and view logic, without a browser."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from daviz.app import mnmef_weights
from daviz.app.frames import MISSING, dequantize, quantize
from daviz.app.presets import PRESETS
from daviz.app.recorder import CycleSample, Recorder, Ring
from daviz.app.state import ExplorerState
from daviz.systems import get_system

FAST = ["EnKF", "LETKF"]  # cheap filters keep these tests quick


@pytest.fixture
def st():
    s = ExplorerState(filters=FAST, N=10)
    s.max_seconds_per_advance = 60.0
    return s


@pytest.fixture
def no_mnmef(monkeypatch):
    monkeypatch.setattr(mnmef_weights, "get_filter",
                        lambda *a: (None, mnmef_weights.MnmefState.unavailable("no weights in this test")))


# ---------------------------------------------------------------------------- recorder and wire format
def test_ring_keeps_the_last_values_oldest_first():
    r = Ring((2,), window=4)
    for v in range(6):
        r.push([v, 10 * v])
    np.testing.assert_array_equal(r.ordered(), [[2, 3, 4, 5], [20, 30, 40, 50]])
    np.testing.assert_array_equal(r.last(2), [[4, 5], [40, 50]])


def test_quantize_keeps_a_colour_level_and_marks_missing():
    lo, hi = -7.0, 12.0
    v = np.array([lo, hi, 0.0, 3.3, np.nan, np.inf, -100.0, 100.0])
    codes = quantize(v, lo, hi)
    assert codes.dtype == np.uint8
    assert codes[0] == 0 and codes[1] == 254 and codes[4] == MISSING and codes[5] == MISSING
    assert codes[6] == 0 and codes[7] == 254  # clipped, as the colour map would show them
    back = dequantize(codes, lo, hi)
    step = (hi - lo) / 254
    assert np.all(np.abs(back[:4] - v[:4]) <= step / 2 + 1e-6)  # within half a level: invisible in 256 colours
    assert np.isnan(back[4]) and np.isnan(back[5])


def test_recorder_window_rrmse_and_rank_histogram():
    sys_ = get_system("l96")
    rec = Recorder(sys_, ["A"], window=50, ensemble_size=9)
    rng = np.random.default_rng(0)
    for c in range(200):
        truth = rng.standard_normal(sys_.dim)
        members = rng.standard_normal((9, sys_.dim))  # truth and members from one distribution
        mean = members.mean(0)
        rank = (members < truth).sum(0)
        rec.append(c, truth, rng.standard_normal(len(sys_.obs_idx)),
                   {"A": CycleSample(mean, members.std(0, ddof=1), 0.5, rank)})
    assert rec.last_cycle == 199 and rec.new_columns(190) == 9 and rec.new_columns(-1) == 50
    err = np.linalg.norm(rec.runs["A"].mean.ordered() - rec.truth.ordered(), axis=0).sum()
    assert rec.window_rrmse("A") == pytest.approx(err / np.linalg.norm(rec.truth.ordered(), axis=0).sum())
    for observed in (True, False):
        h = rec.rank_histogram("A", observed)
        assert h.shape == (10,) and h.sum() == 50 * (10 if observed else 30)
        # a calibrated ensemble: every rank about equally likely (chi-square, 9 dof, p ~ 0.001)
        expected = h.sum() / 10
        assert ((h - expected) ** 2 / expected).sum() < 28


def test_recorder_download_has_the_window_and_settings():
    sys_ = get_system("l96")
    rec = Recorder(sys_, ["LETKF (no inflation)"], window=5, ensemble_size=4)
    for c in range(7):
        rec.append(c, np.full(sys_.dim, c, float), None if c == 0 else np.zeros(10),
                   {"LETKF (no inflation)": CycleSample(np.zeros(40), np.ones(40), 0.1 * c)})
    data = np.load(io.BytesIO(rec.to_npz({"system": "l96", "N": 4})))
    np.testing.assert_array_equal(data["cycle"], [2, 3, 4, 5, 6])
    assert data["truth"].shape == (5, 40) and data["truth"][0, 0] == 2
    assert data["observations"].shape == (5, 10)
    assert data["LETKF_no_inflation__mean"].shape == (5, 40)
    assert json.loads(str(data["settings"]))["N"] == 4


# ---------------------------------------------------------------------------- state
def test_builds_and_step_advances_one_cycle(st):
    assert st.experiment is not None and st.message == ""
    assert st.cycle == 0
    assert st.step() == 1
    assert st.cycle == 1 and st.experiment.cycle == 1 and not st.playing
    rec = st.recorder
    assert np.isfinite(rec.truth.last(1)).all() and rec.last_cycle == 1
    obs = rec.obs.last(1)[:, 0]
    assert np.isfinite(obs[st.sys.obs_idx]).all() and np.isnan(np.delete(obs, st.sys.obs_idx)).all()
    for label in FAST:
        r = rec.runs[label]
        assert np.isfinite(r.mean.last(1)).all() and np.isfinite(r.spread.last(1)).all()
        np.testing.assert_allclose(r.error.last(1), np.abs(r.mean.last(1) - rec.truth.last(1)))
        assert ((r.rank.last(1) >= 0) & (r.rank.last(1) <= st.N)).all()
    assert st.advance(3) == 3 and st.cycle == 4 and rec.last_cycle == 4


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
    tuned = st.tuned_for("letkf")
    assert st.localization == "tuned" and st.inflation_mode == "tuned"
    assert st.radius == pytest.approx(tuned["radius"]) and st.inflation == pytest.approx(tuned["inflation"])
    assert st.experiment.filters["LETKF"].radius == pytest.approx(tuned["radius"])

    st.advance(2)
    st.seed = 3
    assert st.cycle == 0 and st.experiment.seed == 3
    st.sigma_y = 0.5
    assert st.cycle == 0 and st.experiment.sigma_y == 0.5
    st.filters = ["ESRF"]
    assert list(st.experiment.filters) == ["ESRF"] and list(st.recorder.runs) == ["ESRF"]

    st.system = "ks"
    assert st.experiment.system.name == "ks" and st.recorder.dim == 128
    assert st.param.component.bounds == (0, 127)
    st.system = "l63"
    assert st.experiment.system.name == "l63" and st.localization == "off"
    st.filters = ["LETKF", "EnKF"]  # LETKF on L63 runs as the global ETKF
    assert st.advance(2) == 2 and st.message == ""


def test_reset_replays_the_same_truth(st):
    st.advance(4)
    first = st.recorder.truth.last(4)
    st.reset()
    assert st.cycle == 0
    st.advance(4)
    np.testing.assert_array_equal(st.recorder.truth.last(4), first)


def test_play_pause_and_speed(st):
    assert st.cycles_due() == 0  # paused
    st.play()
    assert st.playing
    assert st.cycles_due(now=100.0) == 1  # first look runs one cycle
    st.speed = 20
    assert st.cycles_due(now=100.25) == 5  # 20 cycles/s × 0.25 s
    assert st.cycles_due(now=200.0) == 10  # a long stall is capped at half a second of work
    st.pause()
    assert not st.playing and st.cycles_due() == 0


def test_an_advance_for_the_player_stops_at_pause(st, monkeypatch):
    st.play()
    calls = []
    real_step = st.experiment.step

    def step_then_pause():
        real_step()
        calls.append(1)
        if len(calls) == 2:
            st.pause()  # the user clicks Pause while the engine is running

    monkeypatch.setattr(st.experiment, "step", step_then_pause)
    assert st.advance(50, while_playing=True) == 2
    assert st.advance(3) == 3  # Step ignores playing


def test_forced_divergence_is_flagged_and_others_continue(st):
    st.advance(2)
    st.experiment.states["EnKF"][:] = np.nan  # force the EnKF ensemble non-finite
    st.advance(3)
    assert st.run_status("EnKF") == "diverged" and st.run_status("LETKF") == ""
    assert st.cycle == 5
    assert "EnKF diverged" in st.status_line()
    assert np.isnan(st.current_rrmse()["EnKF"]) and np.isfinite(st.current_rrmse()["LETKF"])
    assert np.isnan(st.recorder.runs["EnKF"].mean.last(3)).all()
    assert np.isfinite(st.recorder.runs["LETKF"].mean.last(3)).all()


def test_lost_track_is_flagged_while_finite():
    # Inflation pinned (not the tuned table, which re-tuning changes; explicit settings win over the tuned
    # defaults): at 1.1 the global ETKF with 5 members drifts away from the truth but stays finite.
    s = ExplorerState(filters=["LETKF (no localization)", "LETKF"], N=5, inflation_mode="manual", inflation=1.1)
    s.max_seconds_per_advance = 600.0
    s.advance(150)
    rec = s.recorder
    assert s.run_status("LETKF (no localization)") == "lost track"
    assert np.isfinite(rec.runs["LETKF (no localization)"].mean.last(1)).all()  # finite: not 'diverged'
    assert s.run_status("LETKF") == ""


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_set_what_they_say(st, name, no_mnmef):
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


@pytest.mark.parametrize("name, value", [("sigma_y", -1.0), ("sigma_y", 0.0), ("sigma_y", 20.0),
                                         ("sigma_y", float("nan")), ("seed", -5), ("N", 1), ("N", 500)])
def test_out_of_range_values_are_refused_and_nothing_changes(st, name, value):
    before = getattr(st, name)
    with pytest.raises(ValueError):
        setattr(st, name, value)
    assert getattr(st, name) == before and st.experiment is not None


def test_no_filter_gives_a_message_and_play_retries(st):
    st.filters = []
    assert "at least one filter" in st.message and st.experiment is None
    assert st.advance(3) == 0 and st.step() == 0
    st.play()  # retries, fails again, stays paused
    assert not st.playing
    st.filters = ["EnKF"]
    assert st.message == "" and st.advance(1) == 1


def test_mnmef_unavailable_keeps_the_others(no_mnmef):
    s = ExplorerState(filters=["EnKF", "MNMEF"], N=10)
    assert [r.label for r in s.runs] == ["EnKF"]
    assert s.mnmef_status == "MNMEF unavailable: no weights in this test"
    assert s.advance(2) == 2


def test_mnmef_alone_and_unavailable_renders_a_message(no_mnmef):
    s = ExplorerState(system="l63", sigma_y=0.5, filters=["MNMEF"], N=10)
    assert s.experiment is None and s.recorder is None
    assert "no filter could be built" in s.message and "no weights in this test" in s.message


def test_score_filters_use_their_tuned_settings_and_a_missing_vae_keeps_the_others():
    from daviz.tuning import tuned_params

    s = ExplorerState(system="ks", sigma_y=1.0, N=10, filters=["EnKF", "EnSF"])
    tuned = tuned_params("ks", "ensf", 10, 1.0)
    assert tuned["params"] == {"kernel": 0.75}, "the shipped table's tuned kernel (not EnSF's default 0.5)"
    ensf = s.experiment.filters["EnSF"]
    assert {k: ensf.settings[k] for k in tuned["params"]} == tuned["params"]
    assert ensf.inflation == pytest.approx(tuned["inflation"])
    # No coupled VAE is shipped for L96 at sigma_y=0.7: Latent-EnSF is left out with the reason, EnKF runs.
    s = ExplorerState(system="l96", sigma_y=0.7, N=10, filters=["EnKF", "Latent-EnSF"])
    assert [r.label for r in s.runs] == ["EnKF"]
    assert "Latent-EnSF left out" in s.message and "train-latent" in s.message
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
    np.testing.assert_array_equal(a.recorder.truth.last(3), b.recorder.truth.last(3))  # same seed, same truth
    c.advance(3)
    assert not np.allclose(a.recorder.truth.last(3), c.recorder.truth.last(3))
    assert a.experiment is not b.experiment and a.recorder is not b.recorder


def test_rolling_window_is_bounded():
    s = ExplorerState(filters=["EnKF"], N=5, window=20)
    s.max_seconds_per_advance = 60.0
    s.advance(35)
    rec = s.recorder
    assert rec.truth.data.shape == (40, 20)
    np.testing.assert_array_equal(rec.cycles.ordered(), np.arange(16, 36))
    assert np.isfinite(rec.truth.ordered()).all()


def test_a_runner_defers_restarts_and_play_waits_for_them(st):
    jobs = []
    st.runner = jobs.append
    st.advance(3)
    st.seed = 9
    assert st.restarting and st.experiment.seed == 0 and len(jobs) == 1  # nothing rebuilt yet
    st.play()
    assert not st.playing  # it plays once the restart has built the experiment
    jobs.pop(0)()
    assert st.experiment.seed == 9 and st.cycle == 0 and not st.restarting and st.playing


# ---------------------------------------------------------------------------- the view (no browser)
def _explorer(**kw):
    pytest.importorskip("panel")
    from daviz.app.explorer import Explorer

    e = Explorer(**kw)
    e.state.max_seconds_per_advance = 60.0
    return e


def _run_jobs(e):
    """Run the explorer's loop until its engine work is done (what the served loop does on its own)."""
    for _ in range(100):
        e.loop.tick()
        if e.loop.work is None and not e.loop.jobs:
            return
        e.loop.work.result(timeout=120)
    raise AssertionError("the loop did not settle")


def test_frames_carry_only_new_columns_and_wait_for_the_browser():
    e = _explorer(filters=FAST, N=10)
    plots = e.plots
    assert plots.push_frame() == e.state.window  # the first frame fills the window
    frame = plots.frame.data
    assert frame["seq"] == [1] and frame["k"] == [e.state.window]
    codes = frame["c0"][0]
    assert codes.dtype == np.uint8 and codes.shape == (40, e.state.window)
    e.state.advance(3)
    assert plots.pending() and not plots.ready(now=plots.sent_at + 1.0)  # frame 1 not yet drawn
    plots.frame.tags = [1]  # what the browser does once it has drawn frame 1
    assert plots.ready()
    assert plots.push_frame() == 3
    frame = plots.frame.data
    assert frame["k"] == [3] and frame["last"] == [3.0]
    np.testing.assert_array_equal(frame["c0"][0], quantize(e.state.recorder.truth.last(3), -7.0, 12.0))
    assert plots.sent_bytes < 3 * 40 * len(plots.images) + 4000  # bytes, not a window of float32 images
    assert plots.x_range.end == pytest.approx(3.5)
    assert not plots.pending() and plots.push_frame() == 0
    assert "cycle <span id='daviz-cycle'>0</span>" not in e.status_html()


def test_the_loop_restarts_off_the_caller_and_rebuilds_the_figures():
    e = _explorer(filters=FAST, N=10)
    plots = e.plots
    e.state.system = "ks"
    assert e.state.restarting and e.plots is plots and e.state.experiment.system.name == "l96"
    assert "restarting…" in e.status_html()
    _run_jobs(e)
    assert e.plots is not plots and e.plots.dim == 128 and not e.state.restarting
    e.state.system = "l63"
    _run_jobs(e)
    assert not e.plots.images and len(e.plots.series) == 3
    e.lecture = True
    _run_jobs(e)
    assert e.plots.lecture and e.plots.key[-2:] == (True, False)


def test_step_and_play_through_the_loop():
    e = _explorer(filters=FAST, N=10)
    e.loop.step()
    _run_jobs(e)
    assert e.state.cycle == 1
    e.state.speed = 60
    e.state.play()
    deadline = time.monotonic() + 60
    while e.state.cycle < 5 and time.monotonic() < deadline:
        e.loop.tick()
        if e.loop.work is not None:
            e.loop.work.result(timeout=60)
        e.plots.frame.tags = [e.plots.seq]  # what the browser does after drawing
    assert e.state.cycle >= 5 and e.frames >= 1
    e.state.pause()
    _run_jobs(e)
    c = e.state.cycle
    e.loop.tick()
    assert e.loop.work is None and e.state.cycle == c


def test_typed_inputs_refuse_bad_values_visibly():
    e = _explorer(filters=FAST, N=10)
    e.controls.sigma_y.value = "0"
    assert e.state.sigma_y == 1.0 and e.controls.sigma_y.value == "1.0"
    assert "refused" in e.state.message and "0.05" in e.state.message and e.notes.message.visible
    e.controls.seed.value = "2.5"
    assert e.state.seed == 0 and e.controls.seed.value == "0" and "whole number" in e.state.message
    e.controls.sigma_y.value = "0.8"
    _run_jobs(e)
    assert e.state.sigma_y == 0.8 and e.state.experiment.sigma_y == 0.8 and e.state.message == ""


def test_messages_are_escaped_never_markup():
    pn = pytest.importorskip("panel")
    e = _explorer(filters=FAST, N=10)
    e.state.message = "ignored: seed=<img src=x onerror=alert(1)> [Session expired](https://evil.example/login)"
    message = e.notes.message
    assert isinstance(message, pn.pane.HTML) and not isinstance(message, pn.pane.Markdown)  # no markdown
    text = message.object
    assert "<img" not in text and "&lt;img" in text
    assert "[Session expired](https://evil.example/login)" in text  # shown as typed, inert


def test_cleanup_stops_everything():
    e = _explorer(filters=FAST, N=10)
    e.close()
    assert e.state.closed and e.state.experiment is None and e.state.recorder is None and e.plots is None
    e.loop.tick()  # a look after the session ended does nothing
    assert e.loop.work is None


def test_url_values_apply_one_by_one_and_bad_ones_are_named(monkeypatch):
    pn = pytest.importorskip("panel")
    from panel.io.location import Location

    from daviz.app.url import sync_url

    query = "?system=ks&N=3&sigma_y=0&filters=EnKF,LETKF&seed=%5Bx%5D(https://evil.example)&speed=30"
    monkeypatch.setattr(pn.state, "_location", Location(search=query))
    e = _explorer(autostart=False)
    sync_url(e)
    st = e.state
    assert (st.system, st.filters, st.speed) == ("ks", ["EnKF", "LETKF"], 30)  # the good ones apply
    assert (st.N, st.sigma_y, st.seed) == (20, 1.0, 0)  # the bad ones are refused
    for shown in ("N=3", "sigma_y=0", "seed=[x](https://evil.example)"):
        assert shown in e.url_problem
    assert "&lt;" not in e.url_problem and "[x](https://evil.example)" in e.notes.message.object  # as typed, inert
    assert st.experiment is not None and st.experiment.system.name == "ks"
    st.speed = 12  # the next change by the user clears the note
    assert e.url_problem == "" and not e.notes.message.visible


def test_variational_runs_shade_their_window_on_the_site_plot():
    e = _explorer(filters=["LETKF", "4D-Var"], N=10)
    e.state.advance(7)
    e.plots.push_frame()
    (label, box), = e.plots.window_boxes
    done, length = e.state.recorder.runs["4D-Var"].window
    assert label == "4D-Var" and box.visible and 0 <= done < length
    assert box.right - box.left == length and box.left == e.state.cycle - done + 0.5
