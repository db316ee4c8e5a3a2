"""`daviz train` and `daviz finetune` subcommands; `register(subparsers)` is called by daviz/cli/.

Also runnable alone: `python -m daviz.mnmef.commands train --system l96 ...` (and under torchrun).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import typing
from importlib import resources
from pathlib import Path

import torch

from .model import ModelConfig
from .step import MODES
from . import checkpoint as ckpt
from .train import TRUNK_RECIPE, train
from .train_config import TrainConfig, finetune_config, flag_of
from .train_schedule import branch_path


# -- TrainConfig settings as flags and recipe keys ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setting:
    """One training setting: its TrainConfig field (or, under `model`, ModelConfig field), flag and type."""
    name: str
    flag: str
    type: type            # int, float, str or bool; of the items when `many`
    help: str
    choices: tuple | None = None
    optional: bool = False  # None allowed (JSON null in a recipe): the library default
    many: bool = False      # a sequence (lr_milestones)


def _config_settings() -> dict[str, Setting]:
    """Generated from the TrainConfig fields: name -> --kebab-case (or the field's metadata 'flag'), type from
    the annotation (the items' from the default for a tuple), help and choices from the field's metadata."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "finetune_from"):  # model: MODEL_SETTINGS below; finetune_from: finetune's --from
            continue
        hint = hints[f.name]
        args = [t for t in typing.get_args(hint) if t is not type(None)]
        kind = args[0] if args else hint
        many = kind is tuple
        if many:
            kind = type(f.default[0]) if f.default else float
        out[f.name] = Setting(f.name, flag_of(f.name), kind,
                              f.metadata["help"], f.metadata.get("choices"), optional=type(None) in typing.get_args(hint),
                              many=many)
    return out


CONFIG_SETTINGS = _config_settings()
# The ModelConfig fields `daviz train` exposes, kept explicit: ModelConfig (daviz/mnmef/model.py) has more fields
# (width, heads, ...) that are not flags, and its choices are checked in code, not declared on the fields.
MODEL_SETTINGS = {s.name: s for s in (
    Setting("feature_dim", "--feature-dim", int, "f_v width: 64 (paper Table C.7) or 128 (authors' code)"),
    Setting("loc_activation", "--loc-activation", str, "g_θ = 2·sigmoid (authors' code, default: it can start as the tuned "
            "EnKF at every N) or 2·softmax (paper)", choices=("sigmoid", "softmax")),
    Setting("inflation_at", "--inflation-at", str, "forecast (default) or analysis", choices=("forecast", "analysis")),
    Setting("cov_divisor", "--cov-divisor", str, "N-1 (default) or N", choices=("N-1", "N")),
)}
MODEL_DEFAULTS = {k: f.default for k, f in ModelConfig.__dataclass_fields__.items() if k in MODEL_SETTINGS}
FROM_CHECKPOINT = ("system", "sigma_y")  # a fine-tune takes these (and the model) from the pretrained checkpoint
REQUIRED = {"train": ("system", "sigma_y"), "finetune": ("N",)}  # on the command line or in the recipe


def command_settings(command: str) -> dict[str, Setting]:
    """The TrainConfig settings `daviz COMMAND` takes as flags and as recipe keys."""
    skip = FROM_CHECKPOINT if command == "finetune" else ()
    return {k: s for k, s in CONFIG_SETTINGS.items() if k not in skip}


def _bool_flag(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _add_config_flags(p: argparse.ArgumentParser, command: str) -> None:
    for s in list(command_settings(command).values()) + (list(MODEL_SETTINGS.values()) if command == "train" else []):
        kw = dict(dest=s.name, default=None, help=s.help, type=_bool_flag if s.type is bool else s.type)
        if s.type is bool:
            kw["metavar"] = "{true,false}"
        elif s.choices:
            kw["choices"] = s.choices
        else:
            kw["metavar"] = s.flag[2:].upper().replace("-", "_")
        if s.many:
            kw["nargs"] = "*"
        if s.name in REQUIRED[command]:
            kw["help"] += " (required: here or in the --recipe)"
        p.add_argument(s.flag, **kw)
    names = ", ".join(shipped_recipes()) or "none"
    p.add_argument("--recipe", metavar="FILE", help="TOML or JSON file of TrainConfig fields (snake_case keys; under "
                   "[model]: " + ", ".join(MODEL_SETTINGS) + ") used as defaults that the flags override; or the name "
                   f"of a shipped recipe in daviz/mnmef/recipes ({names})")


# -- recipe files -------------------------------------------------------------------------------------------
def _recipe_dir():
    return resources.files(__package__).joinpath("recipes")


def shipped_recipes() -> list[str]:
    d = _recipe_dir()
    return sorted(e.name[:-5] for e in d.iterdir() if e.name.endswith(".toml")) if d.is_dir() else []


def _check_value(src: str, s: Setting, value):
    """`value` of setting `s` in recipe `src` as the flag would give it (an int is a float too), else a ValueError."""
    what = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[s.type]
    if s.many:
        what = f"a list of {what.split(' ', 1)[1]}s"

    def one(v):
        if s.type is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, s.type) or (isinstance(v, bool) and s.type is not bool):
            raise ValueError(f"recipe {src}: {s.name} must be {what}, got {value!r}")
        if s.choices and v not in s.choices:
            raise ValueError(f"recipe {src}: {s.name} must be one of {', '.join(s.choices)}, got {v!r}")
        return v

    if value is None and s.optional:
        return None
    if not s.many:
        return one(value)
    if not isinstance(value, list):
        raise ValueError(f"recipe {src}: {s.name} must be {what}, got {value!r}")
    return tuple(one(v) for v in value)


def load_recipe(spec: str, command: str) -> dict:
    """The settings in recipe `spec` (a .toml or .json file, or a shipped recipe's name), checked: every key a
    setting of `daviz COMMAND`, every value of its type. Any problem: a ValueError of one line."""
    path = Path(spec)
    if not path.exists() and spec in shipped_recipes():
        entry = _recipe_dir().joinpath(spec + ".toml")
        src, suffix, read = spec, ".toml", entry.read_text
    else:
        src, suffix, read = spec, path.suffix.lower(), path.read_text
    try:
        text = read(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"recipe {src}: no such file (shipped recipes: {', '.join(shipped_recipes())})") from None
    except IsADirectoryError:
        raise ValueError(f"recipe {src}: is a directory, not a recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read recipe {src}: {getattr(exc, 'strerror', None) or exc}") from None
    fmt = "JSON" if suffix == ".json" else "TOML"
    try:
        data = json.loads(text) if fmt == "JSON" else tomllib.loads(text)
    except ValueError as exc:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise ValueError(f"recipe {src}: not valid {fmt}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {src}: a recipe is a {fmt} {'object' if fmt == 'JSON' else 'table'} of TrainConfig "
                         f"fields, got {type(data).__name__}")
    settings = command_settings(command)
    out = {}
    for key, value in data.items():
        if key == "model" and command == "train":
            if not isinstance(value, dict):
                raise ValueError(f"recipe {src}: model must be a table of {', '.join(MODEL_SETTINGS)}, got {value!r}")
            out["model"] = {}
            for k, v in value.items():
                if k not in MODEL_SETTINGS:
                    raise ValueError(f"recipe {src}: unknown key model.{k} (known: {', '.join(MODEL_SETTINGS)})")
                out["model"][k] = _check_value(src, MODEL_SETTINGS[k], v)
        elif key in settings:
            out[key] = _check_value(src, settings[key], value)
        else:
            hint = ("; a fine-tune takes system, sigma_y and model from the pretrained checkpoint"
                    if command == "finetune" and key in FROM_CHECKPOINT + ("model",) else "")
            known = ", ".join(list(settings) + (["model"] if command == "train" else []))
            raise ValueError(f"recipe {src}: unknown key {key!r} for daviz {command} (known: {known}){hint}")
    return out


def config_settings(a, command: str) -> dict:
    """TrainConfig keyword arguments of a parsed command line: the --recipe's values, then the flags given."""
    recipe = load_recipe(a.recipe, command) if a.recipe else {}
    kw = {k: v for k, v in recipe.items() if k != "model" and v is not None}
    for k in command_settings(command):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    if "lr_milestones" in kw:
        kw["lr_milestones"] = tuple(kw["lr_milestones"])
    if not kw.get("recipe_note"):
        kw.pop("recipe_note", None)
    missing = [CONFIG_SETTINGS[k].flag for k in REQUIRED[command] if k not in kw]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)} (on the command line or in "
                         "the --recipe file)")
    if command == "train":
        model = {**MODEL_DEFAULTS, **recipe.get("model", {})}
        model.update({k: getattr(a, k) for k in MODEL_SETTINGS if getattr(a, k) is not None})
        kw["model"] = model
    return kw


def as_trunk_recorded(a, kw: dict) -> dict:
    """With --resume and an existing --out, what the trunk was trained with wins over the recipe file and the
    fine-tune rule (which may have changed since), so a trunk resumes with the command that started it; a flag
    given on the command line still wins, and the trainer refuses it if it differs from the trunk's."""
    if not (a.resume and Path(a.out).is_file()):
        return kw
    try:
        recorded = ckpt.read_meta(a.out).get("recipe") or {}
    except ckpt.CheckpointError:
        return kw  # the trainer reports the broken trunk
    taken = {k: recorded[k] for k in TRUNK_RECIPE if k in recorded and getattr(a, k, None) is None}
    return {**kw, **taken}


def build_config(a) -> TrainConfig:
    """The TrainConfig of a parsed `train` / `finetune` command line (nothing trained)."""
    if a.command == "finetune":
        kw = as_trunk_recorded(a, config_settings(a, "finetune"))
        return finetune_config(getattr(a, "from"), kw.pop("N"), **kw)
    kw = as_trunk_recorded(a, config_settings(a, "train"))
    if kw["model"]["feature_dim"] < 1:
        raise ValueError(f"--feature-dim must be >= 1, got {kw['model']['feature_dim']}")
    return TrainConfig(**kw)


# -- the commands --------------------------------------------------------------------------------------------
def _runtime(p: argparse.ArgumentParser) -> None:
    """Flags of the run, not of the recipe."""
    p.add_argument("--until-step", type=int, help="stop this run at this global step (wsd: decay a branch to end there)")
    p.add_argument("--budget-seconds", type=float, help="stop this run after this wall time (wsd: decay a branch to fit)")
    p.add_argument("--step-mode", default="auto", choices=("auto",) + MODES,
                   help="auto: eager on CPU, a captured CUDA graph on GPU; compile(+graph): torch.compile'd cycles")
    p.add_argument("--sync-every", type=int, help="read the loss back every this many steps (default: 1 on CPU, 50 on CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", required=True, help="training checkpoint to write (a .json sidecar goes beside it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out if it exists, with the batch, LR, data and gradient window it was trained with")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, ...")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--no-progress", action="store_true")


def _run(a) -> int:
    cfg = build_config(a)
    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    if a.sync_every is not None and a.sync_every < 1:
        raise ValueError(f"--sync-every must be >= 1, got {a.sync_every}")
    meta = train(cfg, a.out, resume=a.resume, device=a.device, checkpoint_minutes=a.checkpoint_minutes,
                 progress=not a.no_progress, mode=a.step_mode, until_step=a.until_step,
                 budget_seconds=a.budget_seconds, sync_every=a.sync_every)
    keys = ("system", "sigma_y", "N", "stage", "progress", "training_seconds", "step_mode",
            "trajectory_cycles_per_second_this_run")
    print(json.dumps({k: meta.get(k) for k in keys}))
    if meta["progress"].get("kind") == "decayed branch":
        print(f"decayed branch (the weights to use): {branch_path(a.out)}; resumable trunk: {a.out}")
    return 0


cmd_train = cmd_finetune = _run


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="pretrain MNMEF on synthetic trajectories (paper §4.3)")
    _add_config_flags(p, "train")
    _runtime(p)
    p.set_defaults(func=cmd_train, run=cmd_train, command="train")
    f = subparsers.add_parser("finetune", help="fine-tune the MNMEF heads for another ensemble size (paper §4.4)")
    f.add_argument("--from", required=True, help=TrainConfig.__dataclass_fields__["finetune_from"].metadata["help"])
    _add_config_flags(f, "finetune")
    _runtime(f)
    f.set_defaults(func=cmd_finetune, run=cmd_finetune, command="finetune")


def cmd_export(a) -> int:
    from .checkpoint import export_weights
    export_weights(getattr(a, "from"), a.out)
    print(f"wrote {a.out} and its .json sidecar")
    return 0


def cmd_record_eval(a) -> int:
    """Copy `daviz evaluate --json` rows into the sidecar of shipped weights, with the command used."""
    from .checkpoint import record_evaluation
    rows = json.load(open(a.json))
    key = f"N={a.N}" if a.N else "all"
    record_evaluation(a.weights, {key: {"command": a.command, "purpose": "test", "results": [
        {k: r[k] for k in ("filter", "N", "sigma_y", "trajectories", "cycles", "rrmse_mean", "rrmse_std", "diverged", "seconds")}
        for r in rows if not a.N or r["N"] == a.N]}})
    print(f"recorded {a.json} in the sidecar of {a.weights}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daviz.mnmef.commands")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    e = sub.add_parser("export", help="ship a training checkpoint as weights only (pretrained/...)")
    e.add_argument("--from", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)
    r = sub.add_parser("record-eval", help="store `daviz evaluate --json` figures in a weights sidecar")
    r.add_argument("--weights", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--command", required=True, help="the evaluate command line that produced the JSON")
    r.add_argument("--N", type=int, help="keep only rows at this N")
    r.set_defaults(func=cmd_record_eval)
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except ValueError as err:  # bad input or a stopped run: one clear line, non-zero status (as `daviz`)
        print(f"daviz: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
