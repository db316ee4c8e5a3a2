"""The report: the largest budget wins, superseded files are left out, improvement (5.4) has the paper's sign,
and regenerating from the same files gives the same output."""
import json

from daviz.mnmef import report


def row(filt, N, mean, traj=64, cycles=1500, system="l96", sigma=1.0):
    return {"system": system, "filter": filt, "N": N, "sigma_y": sigma, "trajectories": traj, "cycles": cycles,
            "rrmse_mean": mean, "rrmse_std": 0.01, "diverged": 0}


def test_report(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.json").write_text(json.dumps([row("letkf", 10, 0.50), row("mnmef-finetuned", 10, 0.40),
                                            row("letkf", 20, 0.30, traj=8)]))
    (res / "b.json").write_text(json.dumps([row("letkf", 20, 0.36), row("mnmef-finetuned", 20, 0.45),
                                            row("letkf", 10, 0.99, traj=4)]))  # smaller budget: loses
    (res / "old.json").write_text(json.dumps([row("letkf", 10, 0.01)]))
    (res / "mixed.json").write_text(json.dumps([row("esrf", 20, 0.9, traj=128), row("enkf", 20, 0.5)]))
    (res / "superseded.json").write_text(json.dumps({"old.json": "wrong system",
                                                     "mixed.json": {"reason": "untunable now", "rows": [["esrf", 20]]}}))
    assert report.main(["--results", str(res), "--out", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = data["l96_s1.0"]["rows"]
    assert rows["letkf|10"]["rrmse_mean"] == 0.50 and rows["letkf|20"]["rrmse_mean"] == 0.36
    imp = data["l96_s1.0"]["relative_improvement"]
    assert abs(imp["mnmef-finetuned|letkf|10"] - 0.2) < 1e-12 and imp["mnmef-finetuned|letkf|20"] < 0
    assert any("old.json" in n for n in data["notes"])
    assert "esrf|20" not in rows and rows["enkf|20"]["rrmse_mean"] == 0.5  # only the withdrawn row is dropped
    md = (tmp_path / "r" / "tables.md").read_text()
    assert "**0.4000 ± 0.0100**" in md and "+20.0 %" in md
    assert (tmp_path / "r" / "rrmse_l96_s1.0.png").stat().st_size > 0
    assert (tmp_path / "r" / "improvement_l96_s1.0.png").is_file()
    first = md
    report.main(["--results", str(res), "--out", str(tmp_path / "r")])
    assert (tmp_path / "r" / "tables.md").read_text() == first


def test_equal_budgets_pick_by_name_not_by_modification_time(tmp_path):
    """A clone's modification times are its checkout's, so a tie is broken by the file name alone: the report
    comes out the same on every clone."""
    import os

    res = tmp_path / "results"
    res.mkdir()
    (res / "eval_a.json").write_text(json.dumps([row("letkf", 20, 0.30)]))
    (res / "eval_b.json").write_text(json.dumps([row("letkf", 20, 0.25)]))
    os.utime(res / "eval_b.json", (1_000_000, 1_000_000))  # the later name is the older file here
    rows, _ = report.load_rows(res)
    assert rows[("l96", 1.0, "letkf", 20)]["rrmse_mean"] == 0.25


def test_warm_curve_next_to_first_recipe(tmp_path):
    """The warm-started curve is put on the first recipe's x axis (trajectory-cycles = steps x batch x cycles),
    with step 0 taken from the 'enkf' start measured the same way, and fine-tune curves left out."""
    res = tmp_path / "results"
    res.mkdir()
    point = {"N": 10, "trajectories": 64, "cycles": 1500, "purpose": "tune", "rrmse_std": 0.01}
    (res / "mnmef_learning_curve_l96_s1.0.json").write_text(json.dumps({
        "setup": {"batch_size": 64, "cycles": 60},
        "points": [{"arm": "cosine", "steps": 100, "rrmse_mean": 0.48, **point},
                   {"arm": "wsd", "steps": 100, "rrmse_mean": 0.47, **point},  # the better schedule is shown
                   {"arm": "untrained", "steps": 0, "rrmse_mean": 1.0, **point}]}))
    (res / "mnmef_warm_curve_l96_s1.0.json").write_text(json.dumps({"points": [
        {"trajectory_cycles": 4_000_000, "rrmse_mean": 0.38, **point}]}))
    (res / "mnmef_warm_curve_l96_s1.0_ft40.json").write_text(json.dumps({"points": [
        {"trajectory_cycles": 1, "rrmse_mean": 0.3, **{**point, "N": 40}}]}))
    (res / "mnmef_starts_l96_s1.0.json").write_text(json.dumps({"rows": [
        {"start": "enkf", "rrmse_mean": 0.45, **{**point, "trajectories": 32}},  # another measure: not step 0
        {"start": "enkf", "rrmse_mean": 0.46, **point}, {"start": "none", "rrmse_mean": 0.1, **point}]}))
    md = report.warm_curves(res, tmp_path / "r")
    assert "| run | 0.00 M | 0.38 M | 4.00 M |" in md
    assert "| first recipe (best schedule) |  | 0.4700 ± 0.0100 |  |" in md
    assert "| warm-started | 0.4600 ± 0.0100 |  | 0.3800 ± 0.0100 |" in md
    assert "ft40" not in md and (tmp_path / "r" / "warm_curve_l96_s1.0.png").stat().st_size > 0
