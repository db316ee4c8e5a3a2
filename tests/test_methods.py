"""daviz.methods: one registry from method names to filters, used alike by the CLI and the explorer."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daviz import cli, methods
from daviz.artifacts import CheckpointError
from daviz.filters import FILTER_CLASSES, FILTER_NAMES
from daviz.latent import pretrained as latent_pretrained
from daviz.systems import SYSTEM_NAMES, get_system
from daviz.tuning import tuned_params

DAVIZ = Path(__file__).resolve().parents[1] / "daviz"
# Which (name, system) cannot be built at sigma_y=1.0, N=20, and why: the rest must build.
UNAVAILABLE = {
    ("kalman", "l63"), ("kalman", "l96"), ("kalman", "ks"),  # the exact filter needs the linear system
    ("latent-ensf", "l63"), ("latent-ensf", "linear"),  # its coupled VAE is made for L96 and KS only
    ("mnmef", "linear"), ("mnmef-pretrained", "linear"),  # no weights shipped
    ("nida", "ks"), ("nida", "linear"), ("nida-4dvar", "ks"), ("nida-4dvar", "linear"),
}


def _finetune_shipped(system: str) -> bool:
    """Fine-tuned MNMEF weights for (system, sigma_y=1.0, N=20) are in pretrained/ (they come and go with training)."""
    from daviz.mnmef import pretrained
    return any((e["system"], e["sigma_y"], e["N"], e["variant"]) == (system, 1.0, 20, "finetuned")
               for e in pretrained.available())


def test_every_name_of_every_dispatch_is_registered_once():
    names = set(methods.METHODS)
    assert set(FILTER_CLASSES) <= names and {"latent-ensf", "mnmef", "mnmef-pretrained", "mnmef-finetuned",
                                              "4dvar", "nida", "nida-4dvar"} <= names
    assert methods.tunable_names() == FILTER_NAMES + ("ensf",)  # what `daviz tune --filter` offers
    assert cli.main(["evaluate", "--filters", "enkf,kalmann"]) == 2
    with pytest.raises(ValueError, match="unknown filter 'foo'"):
        methods.build("foo", "l96", 1.0, 20)


@pytest.mark.parametrize("system", SYSTEM_NAMES)
@pytest.mark.parametrize("name", list(methods.METHODS))
def test_every_name_builds_for_each_system_or_says_why_not(name, system):
    spec = methods.get(name)
    if (name, system) in UNAVAILABLE or (name == "mnmef-finetuned" and not _finetune_shipped(system)):
        with pytest.raises(ValueError) as err:  # CheckpointError is a ValueError
            methods.build(name, system, 1.0, 20)
        assert "\n" not in str(err.value) and (not spec.needs_weights or isinstance(err.value, CheckpointError))
        return
    f, report = methods.build(name, system, 1.0, 20)
    assert f.name == spec.kind and isinstance(report, dict)
    assert getattr(f, "scores_window_ends", False) == spec.windowed  # the flag says what the filter does
    assert type(f).localizes == spec.localizes
    assert ("weights" in report or "vae" in report) == spec.needs_weights


def test_baselines_get_the_tuned_table_entry_or_the_override():
    tuned = tuned_params("l96", "letkf", 20, 1.0)
    f, report = methods.build("letkf", "l96", 1.0, 20)
    assert float(f.inflation) == tuned["inflation"] and float(f.radius) == tuned["radius"]
    assert report["source"] == tuned["source"] == methods.tuned_settings("letkf", "l96", 1.0, 20)["source"]
    f, report = methods.build("letkf", "l96", 1.0, 20, inflation=1.3, radius=methods.NO_LOCALIZATION)
    assert float(f.inflation) == 1.3 and f.radius is None and report["source"] == "command line"
    assert methods.build("letkf", "l96", 1.0, 20, radius=0.0)[0].radius is None  # <= 0: off, as `--radius 0`
    ensf = methods.build("ensf", "l96", 1.0, 20)[0]
    assert ensf.params["kernel"] == tuned_params("l96", "ensf", 20, 1.0)["params"]["kernel"]


def test_latent_ensf_settings_have_one_home_the_weights_sidecar():
    for system in ("l96", "ks"):
        meta = latent_pretrained.read_meta(latent_pretrained.weights_path(system, 1.0))
        f, report = methods.build("latent-ensf", system, 1.0, 20)
        assert f.inflation == meta["filter"]["inflation"] and f.gamma == meta["filter"]["gamma"]
        assert "sidecar" in report["vae"]["settings_from"] and ".json" in report["source"]
    f, report = methods.build("latent-ensf", "l96", 1.0, 20, inflation=1.05, gamma=2.0)
    assert f.inflation == 1.05 and f.gamma == 2.0 and report["source"] == "command line"


def test_a_broken_table_stops_the_cli_but_the_explorer_gets_the_fallback(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("table is not valid JSON")

    monkeypatch.setattr(methods, "tuned_params", broken)
    with pytest.raises(ValueError, match="not valid JSON"):
        methods.tuned_settings("letkf", "l96", 1.0, 20)
    ks = get_system("ks")
    fallback = methods.tuned_settings("letkf", "ks", 1.0, 20, strict=False)
    assert fallback == {"inflation": ks.fallback_inflation, "radius": ks.fallback_radius, "params": {},
                        "source": "fallback (ValueError)"}
    f, _ = methods.build("letkf", "ks", 1.0, 20, tuned=fallback)  # what the explorer then builds
    assert float(f.inflation) == ks.fallback_inflation and float(f.radius) == ks.fallback_radius


@pytest.mark.parametrize("system,labels", [
    ("l96", ["EnKF", "ESRF", "LETKF", "IEnKF", "EnSF", "Latent-EnSF", "4D-Var"]),
    ("ks", ["LETKF", "EnSF", "Latent-EnSF"]),
    ("l63", ["EnKF", "LETKF", "4D-Var"]),
])
def test_the_explorer_and_the_cli_build_the_same_filters(system, labels):
    """A tuned explorer session runs each filter with the settings `daviz evaluate` reports for it."""
    from daviz.app.runs import RUNS
    from daviz.app.state import ExplorerState

    st = ExplorerState(system=system, sigma_y=1.0, N=20, filters=labels)
    assert st.experiment is not None and set(st.experiment.filters) == set(labels), st.message
    for label in labels:
        name = RUNS[label].base
        if name == "letkf" and not get_system(system).periodic:
            continue  # the explorer shows the global ETKF there
        app, cli_built = st.experiment.filters[label], methods.build(name, system, 1.0, 20)[0]
        assert type(app) is type(cli_built)
        assert _comparable(app.params) == _comparable(cli_built.params), label


def _comparable(params: dict) -> dict:
    return {k: np.asarray(v).tolist() if v is not None else None for k, v in params.items()}


def test_numpy_paths_do_not_import_torch():
    code = ("import sys, daviz.methods, daviz.cli, daviz.tuning, daviz.filters, daviz.artifacts; "
            "from daviz.methods import build; build('letkf', 'l96', 1.0, 20); build('ensf', 'ks', 1.0, 20); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


LOW = ("systems", "filters", "metrics", "seeding", "artifacts", "experiment", "tuning")
HIGH = ("mnmef", "variational", "latent", "methods", "cli", "app")
TRANSITIONAL: set = set()  # none left: the explorer builds through daviz.methods


def _imports(path: Path, package: str) -> set[str]:
    """Top-level daviz parts `path` imports (also inside functions)."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + [node.module or node.names[0].name])
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
        elif isinstance(node, ast.Import):
            target = node.names[0].name
        else:
            continue
        if target.startswith("daviz."):
            parts.add(target.split(".")[1])
    return parts


def test_lower_layers_import_no_method_package():
    for path in DAVIZ.rglob("*.py"):
        rel = path.relative_to(DAVIZ.parent).with_suffix("")
        module = ".".join(rel.parts)
        part = rel.parts[1]
        if part not in LOW:
            continue
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        package = package.removesuffix(".__init__")
        upward = {p for p in _imports(path, package) if p in HIGH and (part, p) not in TRANSITIONAL}
        assert not upward, f"{module} imports {upward}"
