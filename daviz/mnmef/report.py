"""Regenerate the result tables and figures from the evaluation JSON in results/ (issue 11 point 6).

    python -m daviz.mnmef.report [--results results] [--out results/report]

Reads every `daviz evaluate --json` file in --results (lists of rows: system, filter, N, sigma_y,
trajectories, cycles, rrmse_mean, rrmse_std, diverged), except those named in results/superseded.json
({file: reason}, e.g. runs on a system definition since corrected; or {file: {"reason": ..., "rows":
[[filter, N], ...]}} to drop only those rows, e.g. a baseline setting a re-tune has since withdrawn).
Where several rows give the same (system, sigma_y, filter, N), the one with the most trajectory-cycles
wins (ties: the file whose name sorts last; not the newest, since a clone's modification times are its
checkout's); a row a later run replaces belongs in results/superseded.json.
Writes, for every (system, sigma_y):
  tables.md                      R-RMSE mean ± std (eqs. 5.3, 5.8) by N and filter, the best per N in bold,
                                 and the relative improvement (5.4) of MNMEF over each tuned baseline;
  report.json                    the same numbers, with the file and budget behind each;
  rrmse_{system}_s{sigma}.png    R-RMSE against N (the paper's Figs. 1, 4, 7, upper rows);
  improvement_{system}_s{sigma}.png  relative improvement of fine-tuned MNMEF over each baseline (lower rows);
and, when present, the learning-curve tables (results/mnmef_learning_curve_*.json; the warm-started run's
results/mnmef_warm_curve_*.json next to it, with warm_curve_{system}_s{sigma}.png).
The output depends on the input files only (no dates), so regenerating without new results changes nothing.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..metrics import relative_improvement

BASELINES = ("enkf", "esrf", "letkf", "ienkf")
MNMEF = ("mnmef-pretrained", "mnmef-finetuned", "mnmef")
LABEL = {"enkf": "EnKF", "esrf": "ESRF", "letkf": "LETKF", "ienkf": "IEnKF", "mnmef": "MNMEF (auto)",
         "mnmef-pretrained": "MNMEF pretrained", "mnmef-finetuned": "MNMEF fine-tuned", "kalman": "Kalman"}
COLORS = {"enkf": (31, 119, 180), "esrf": (255, 127, 14), "letkf": (44, 160, 44), "ienkf": (148, 103, 189),
          "mnmef": (214, 39, 40), "mnmef-pretrained": (227, 119, 194), "mnmef-finetuned": (214, 39, 40),
          "kalman": (127, 127, 127)}


def load_rows(results: Path) -> tuple[dict, list[str]]:
    """{(system, sigma_y, filter, N): row} with the largest budget, and notes on what was skipped."""
    superseded_file = results / "superseded.json"
    superseded = json.loads(superseded_file.read_text()) if superseded_file.is_file() else {}
    best, notes = {}, []
    for f in sorted(results.glob("*.json"), key=lambda p: p.name):
        entry = superseded.get(f.name)
        dropped = set()
        if isinstance(entry, dict):
            dropped = {(filt, int(N)) for filt, N in entry.get("rows", [])}
            notes.append(f"skipped rows {sorted(dropped)} of {f.name}: {entry.get('reason', '')}")
        elif entry is not None:
            notes.append(f"skipped {f.name}: {entry}")
            continue
        try:
            rows = json.loads(f.read_text())
        except json.JSONDecodeError:
            notes.append(f"skipped {f.name}: not valid JSON")
            continue
        if not isinstance(rows, list):
            continue
        for r in rows:
            if not isinstance(r, dict) or not {"system", "filter", "N", "sigma_y", "rrmse_mean"} <= set(r):
                continue
            if r["rrmse_mean"] is None or not math.isfinite(float(r["rrmse_mean"])):
                continue
            if (r["filter"], int(r["N"])) in dropped:
                continue
            key = (r["system"], float(r["sigma_y"]), r["filter"], int(r["N"]))
            budget = int(r.get("trajectories", 0)) * int(r.get("cycles", 0))
            if key not in best or budget >= best[key][0]:
                best[key] = (budget, {**r, "file": f.name})
    return {k: v[1] for k, v in best.items()}, notes


def _fmt(r) -> str:
    return f"{r['rrmse_mean']:.4f} ± {r['rrmse_std']:.4f}" if r.get("rrmse_std") is not None else f"{r['rrmse_mean']:.4f}"


def tables(rows: dict) -> tuple[str, dict]:
    out, data = [], {}
    for system, sigma in sorted({(k[0], k[1]) for k in rows}):
        sub = {(k[2], k[3]): r for k, r in rows.items() if k[:2] == (system, sigma)}
        known = BASELINES + MNMEF + ("kalman",)
        filters = [f for f in known if any(k[0] == f for k in sub)] + sorted({k[0] for k in sub} - set(known))
        Ns = sorted({k[1] for k in sub})
        out.append(f"### {system.upper()}, sigma_y = {sigma}\n")
        out.append("| N | " + " | ".join(LABEL.get(f, f) for f in filters) + " |")
        out.append("|---:|" + "---:|" * len(filters))
        for N in Ns:
            vals = {f: sub[(f, N)]["rrmse_mean"] for f in filters if (f, N) in sub}
            low = min(vals.values()) if vals else None
            cells = []
            for f in filters:
                r = sub.get((f, N))
                cells.append("" if r is None else (f"**{_fmt(r)}**" if r["rrmse_mean"] == low else _fmt(r)))
            out.append(f"| {N} | " + " | ".join(cells) + " |")
        budgets = sorted({(r["trajectories"], r["cycles"]) for r in sub.values()})
        out.append("\nR-RMSE mean ± std over test trajectories (eqs. 5.3, 5.8); budgets (trajectories x cycles): "
                   + ", ".join(f"{t} x {c}" for t, c in budgets) + ".\n")
        ours = [f for f in MNMEF if any(k[0] == f for k in sub)]
        base = [f for f in BASELINES if any(k[0] == f for k in sub)]
        improvement = {}
        if ours and base:
            out.append("Relative improvement (5.4) of MNMEF over each tuned baseline (positive: MNMEF better):\n")
            out.append("| N | " + " | ".join(f"{LABEL[o]} vs {LABEL[b]}" for o in ours for b in base) + " |")
            out.append("|---:|" + "---:|" * (len(ours) * len(base)))
            for N in Ns:
                cells = []
                for o in ours:
                    for b in base:
                        if (o, N) in sub and (b, N) in sub:
                            v = relative_improvement(sub[(b, N)]["rrmse_mean"], sub[(o, N)]["rrmse_mean"])
                            improvement[f"{o}|{b}|{N}"] = v
                            cells.append(f"{100 * v:+.1f} %")
                        else:
                            cells.append("")
                out.append(f"| {N} | " + " | ".join(cells) + " |")
            out.append("")
        data[f"{system}_s{sigma}"] = {"rows": {f"{f}|{N}": r for (f, N), r in sorted(sub.items())},
                                      "relative_improvement": improvement}
    return "\n".join(out), data


def curve_table(results: Path) -> str:
    out = []
    for f in sorted(results.glob("mnmef_learning_curve_*.json")):
        doc = json.loads(f.read_text())
        pts = doc.get("points", [])
        arms = sorted({p["arm"] for p in pts if p["arm"] not in ("untrained", "shipped")})
        steps = sorted({p["steps"] for p in pts if p["arm"] in arms})
        ev = doc.get("setup", {}).get("eval", {})
        out.append(f"### Learning curve ({f.name})\n")
        out.append(f"Held-out R-RMSE at N={ev.get('N')} ({ev.get('trajectories')} {ev.get('purpose')}-stream "
                   f"trajectories x {ev.get('cycles')} cycles) after S optimizer steps; command: `{doc.get('command')}`.\n")
        out.append("| arm | " + " | ".join(f"S = {s}" for s in steps) + " |")
        out.append("|---|" + "---:|" * len(steps))
        for arm in arms:
            got = {p["steps"]: p for p in pts if p["arm"] == arm}
            out.append(f"| {arm} | " + " | ".join(_fmt(got[s]) if s in got else "" for s in steps) + " |")
        refs = {(p["arm"], p["steps"]): p for p in pts if p["arm"] in ("untrained", "shipped")}  # a re-measured point once
        for (arm, steps), p in refs.items():
            out.append(f"\n{arm} ({steps} steps): {_fmt(p)}")
        out.append("")
    return "\n".join(out)


def _first_recipe_curve(results: Path, system: str, sigma: float) -> list[tuple[int, dict]]:
    """(trajectory-cycles, best row) of the first recipe's learning curve: the best schedule at each budget."""
    f = results / f"mnmef_learning_curve_{system}_s{sigma}.json"
    if not f.exists():
        return []
    doc = json.loads(f.read_text())
    setup = doc.get("setup", {})
    per_step = setup.get("batch_size", 64) * setup.get("cycles", 60)
    best: dict[int, dict] = {}
    for p in doc.get("points", []):
        if p["arm"] != "untrained" and (p["steps"] not in best or p["rrmse_mean"] < best[p["steps"]]["rrmse_mean"]):
            best[p["steps"]] = p
    return sorted((s * per_step, p) for s, p in best.items())


def _warm_step0(results: Path, system: str, sigma: float, like: dict) -> dict | None:
    """The warm start at step 0 (= the tuned localized EnKF at N) scored like the curve's points, if measured."""
    f = results / f"mnmef_starts_{system}_s{sigma}.json"
    rows = json.loads(f.read_text())["rows"] if f.exists() else []
    same = [r for r in rows if r["start"] == "enkf" and all(r.get(k) == like.get(k)
                                                            for k in ("N", "trajectories", "cycles", "purpose"))]
    return same[-1] if same else None


def warm_curves(results: Path, out: Path | None) -> str:
    """The warm-started run's learning curve (python -m daviz.mnmef.promote --curve) next to the first recipe's,
    against trajectory-cycles (issue 20 point 7); with `out`, also warm_curve_{system}_s{sigma}.png."""
    md = []
    for f in sorted(results.glob("mnmef_warm_curve_*.json")):
        system, _, sigma = f.stem.removeprefix("mnmef_warm_curve_").partition("_s")
        if "_ft" in sigma:
            continue  # per-N fine-tunes start elsewhere; their curves are in the sidecars
        sigma = float(sigma)
        warm = [(p["trajectory_cycles"], p) for p in json.loads(f.read_text())["points"]]
        if not warm:
            continue
        step0 = _warm_step0(results, system, sigma, warm[0][1])
        if step0:
            warm = [(0, step0)] + warm
        first = _first_recipe_curve(results, system, sigma)
        ev = warm[-1][1]
        md.append(f"### Warm-started learning curve, {system.upper()} sigma_y = {sigma} ({f.name})\n")
        md.append(f"Tune-set R-RMSE at N={ev['N']} ({ev['trajectories']} x {ev['cycles']}) against the trajectory-"
                  "cycles trained on (M = million); step 0 of the warm start is the tuned localized EnKF.\n")
        cols = sorted({tc for tc, _ in first + warm})
        md.append("| run | " + " | ".join(f"{tc / 1e6:.2f} M" for tc in cols) + " |")
        md.append("|---|" + "---:|" * len(cols))
        for name, pts in (("first recipe (best schedule)", first), ("warm-started", warm)):
            got = dict(pts)
            md.append(f"| {name} | " + " | ".join(_fmt(got[tc]) if tc in got else "" for tc in cols) + " |")
        md.append("")
        if out is not None:
            series = {"first recipe": {"points": [(max(tc, 1e5), p["rrmse_mean"]) for tc, p in first],
                                       "color": (110, 110, 110)},
                      "warm-started": {"points": [(max(tc, 1e5), p["rrmse_mean"]) for tc, p in warm],
                                       "color": (200, 30, 30), "bold": True}}
            _plot(out / f"warm_curve_{system}_s{sigma}.png", f"{system.upper()}, sigma_y = {sigma}: "
                  "tune-set R-RMSE vs trajectory-cycles (step 0 drawn at 1e5)", "trajectory-cycles", "R-RMSE",
                  series)
    return "\n".join(md)


# -- figures (Pillow only: no plotting library is a dependency) -----------------------------------------------
def _plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict, log_x=True, zero_line=False) -> None:
    from PIL import Image, ImageDraw
    W, H, L, R, T, B = 760, 480, 80, 190, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for s in series.values() for x, y in s["points"]]
    if not pts:
        return
    xs = [math.log(x) if log_x else x for x, _ in pts]
    ys = [y for _, y in pts] + ([0.0] if zero_line else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 0.08 * (y1 - y0 or 1)
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x):
        return L + (W - L - R) * ((math.log(x) if log_x else x) - x0) / (x1 - x0)

    def py(y):
        return T + (H - T - B) * (1 - (y - y0) / (y1 - y0))

    d.rectangle([L, T, W - R, H - B], outline="black")
    for x in sorted({x for x, _ in pts}):
        d.line([px(x), H - B, px(x), H - B + 5], fill="black")
        d.text((px(x) - 8, H - B + 8), str(x), fill="black")
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        d.line([L - 5, py(y), L, py(y)], fill="black")
        d.text((5, py(y) - 6), f"{y:.3f}" if abs(y1 - y0) < 1 else f"{y:.2f}", fill="black")
    if zero_line:
        d.line([L, py(0), W - R, py(0)], fill=(150, 150, 150))
    for i, (name, s) in enumerate(series.items()):
        color = s.get("color", (0, 0, 0))
        p = sorted(s["points"])
        d.line([(px(x), py(y)) for x, y in p], fill=color, width=3 if s.get("bold") else 2)
        for x, y in p:
            d.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=color)
        ly = T + 10 + 18 * i
        d.line([W - R + 12, ly + 6, W - R + 36, ly + 6], fill=color, width=3)
        d.text((W - R + 42, ly), name + (" *" if s.get("bold") else ""), fill="black")
    d.text((L, 12), title, fill="black")
    d.text(((L + W - R) / 2 - 40, H - 25), xlabel, fill="black")
    d.text((5, T - 25), ylabel, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def figures(rows: dict, out: Path) -> list[Path]:
    made = []
    for system, sigma in sorted({(k[0], k[1]) for k in rows}):
        sub = {(k[2], k[3]): r for k, r in rows.items() if k[:2] == (system, sigma)}
        series = {}
        others = sorted({g for g, _ in sub} - set(BASELINES + MNMEF))
        for f in BASELINES + MNMEF + tuple(others):
            p = [(N, r["rrmse_mean"]) for (g, N), r in sorted(sub.items()) if g == f]
            if p:
                series[LABEL.get(f, f)] = {"points": p, "color": COLORS.get(f, (110, 110, 110)), "bold": f in MNMEF}
        path = out / f"rrmse_{system}_s{sigma}.png"
        _plot(path, f"{system.upper()}, sigma_y = {sigma}: R-RMSE vs ensemble size", "N", "R-RMSE", series)
        made.append(path)
        ours = next((f for f in ("mnmef-finetuned", "mnmef", "mnmef-pretrained") if any(k[0] == f for k in sub)), None)
        if ours:
            imp = {}
            for b in BASELINES:
                p = [(N, 100 * relative_improvement(sub[(b, N)]["rrmse_mean"], sub[(ours, N)]["rrmse_mean"]))
                     for (g, N) in sorted(sub) if g == b and (ours, N) in sub]
                if p:
                    imp[f"vs {LABEL[b]}"] = {"points": p, "color": COLORS[b]}
            if imp:
                path = out / f"improvement_{system}_s{sigma}.png"
                _plot(path, f"{system.upper()}, sigma_y = {sigma}: relative improvement (5.4) of {LABEL[ours]}, %",
                      "N", "%", imp, zero_line=True)
                made.append(path)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daviz.mnmef.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default="results/report")
    ap.add_argument("--no-figures", action="store_true")
    a = ap.parse_args(argv)
    results, out = Path(a.results), Path(a.out)
    rows, notes = load_rows(results)
    md, data = tables(rows)
    md = ("# Results regenerated from " + str(results) + "/ by `python -m daviz.mnmef.report`\n\n" + md + "\n"
          + curve_table(results) + warm_curves(results, None if a.no_figures else out) + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"notes": notes, **data}, indent=1, sort_keys=True) + "\n")
    made = [] if a.no_figures else figures(rows, out)
    print(f"wrote {out / 'tables.md'}, {out / 'report.json'}" + (f" and {len(made)} figures" if made else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
