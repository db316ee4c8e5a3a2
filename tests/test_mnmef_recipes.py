"""`daviz train` / `finetune` flags generated from the TrainConfig fields, and --recipe files (no training)."""
import argparse
import dataclasses
import fnmatch
import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from daviz import cli
from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef import commands
from daviz.mnmef import train as train_mod
from daviz.mnmef.model import MNMEF, ModelConfig
from daviz.mnmef.train import TrainConfig, finetune_config
from daviz.systems import get_system

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    return cli.parser(argv).parse_args(argv)


def config(argv) -> TrainConfig:
    return commands.build_config(parse(argv))


def options(command) -> dict[str, argparse.Action]:
    p = argparse.ArgumentParser()
    commands.register(p.add_subparsers())
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sub._option_string_actions


@pytest.fixture
def no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(train_mod, "make_data", boom)
    monkeypatch.setattr(commands, "train", boom)


# -- flags generated from the fields -------------------------------------------------------------------------
def sample(s: commands.Setting):
    """A command-line value for setting s and the value it should give."""
    if s.choices:
        v = s.choices[-1]
        return [v], v
    if s.type is bool:
        return ["true"], True
    v = {int: 7, float: 0.5, str: "x"}[s.type]
    return ([str(v), str(v)], (v, v)) if s.many else ([str(v)], v)


def test_every_field_has_a_flag_with_its_help():
    train_opts, ft_opts = options("train"), options("finetune")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            for k, s in commands.MODEL_SETTINGS.items():
                assert k in {x.name for x in dataclasses.fields(ModelConfig)}
                assert train_opts[s.flag].dest == k and s.flag not in ft_opts
            continue
        if f.name == "finetune_from":
            assert "--from" in ft_opts and ft_opts["--from"].required
            continue
        flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
        assert train_opts[flag].dest == f.name and train_opts[flag].help.startswith(f.metadata["help"]), f.name
        assert (flag in ft_opts) == (f.name not in commands.FROM_CHECKPOINT), f.name
    assert {"--note", "--sigma-y", "--batch-size", "--lr-milestones", "--N"} <= set(train_opts)


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_each_generated_flag_reaches_the_config(command):
    base = (["train", "--system", "l63", "--sigma-y", "1.0"] if command == "train"
            else ["finetune", "--from", "x.pt", "--N", "5"])
    settings = dict(commands.command_settings(command))
    if command == "train":
        settings.update(commands.MODEL_SETTINGS)
    for name, s in settings.items():
        argv_value, expected = sample(s)
        args = parse(base + [s.flag] + argv_value + ["--out", "o.pt"])
        kw = commands.config_settings(args, command)
        got = kw["model"][name] if name in commands.MODEL_SETTINGS else kw[name]
        assert got == expected, name


def test_old_flags_keep_their_meaning():
    argv = ["train", "--system", "ks", "--sigma-y", "0.7", "--N", "20", "--epochs", "3", "--trajectories", "64",
            "--cycles", "5", "--batch-size", "16", "--lr", "2e-3", "--weight-decay", "0", "--lr-milestones", "0.5",
            "--schedule", "cosine", "--warmup-steps", "4", "--decay-fraction", "0.3", "--max-steps", "9",
            "--seed", "3", "--grad-window", "2", "--feature-dim", "32", "--loc-activation", "sigmoid",
            "--inflation-at", "analysis", "--cov-divisor", "N", "--note", "hello", "--out", "o.pt"]
    expected = TrainConfig(system="ks", sigma_y=0.7, N=20, epochs=3, trajectories=64, cycles=5, batch_size=16, lr=2e-3,
                           weight_decay=0.0, lr_milestones=(0.5,), schedule="cosine", warmup_steps=4, decay_fraction=0.3,
                           max_steps=9, seed=3, grad_window=2, recipe_note="hello",
                           model={"feature_dim": 32, "loc_activation": "sigmoid", "inflation_at": "analysis",
                                  "cov_divisor": "N"})
    assert config(argv) == expected
    # no flags: the library defaults, the model config written out in full as before
    plain = config(["train", "--system", "l96", "--sigma-y", "1.0", "--out", "o.pt"])
    assert plain == TrainConfig(system="l96", sigma_y=1.0, model={"feature_dim": 64, "loc_activation": "sigmoid",
                                                                  "inflation_at": "forecast", "cov_divisor": "N-1"})


# -- recipe files ----------------------------------------------------------------------------------------------
def test_recipe_values_reach_the_config_and_flags_override_them(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('system = "l63"\nsigma_y = 0.7\nepochs = 3\nlr = 1e-3\nweight_decay = 0\nlr_milestones = [0.5]\n'
                 'schedule = "wsd"\n\n[model]\nloc_activation = "sigmoid"\nfeature_dim = 16\n')
    cfg = config(["train", "--recipe", str(r), "--out", "o.pt"])
    assert (cfg.system, cfg.sigma_y, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.lr_milestones, cfg.schedule) == \
        ("l63", 0.7, 3, 1e-3, 0.0, (0.5,), "wsd")
    assert isinstance(cfg.weight_decay, float)
    assert cfg.model == {"feature_dim": 16, "loc_activation": "sigmoid", "inflation_at": "forecast", "cov_divisor": "N-1"}
    cfg = config(["train", "--recipe", str(r), "--lr", "2e-3", "--lr-milestones", "--loc-activation", "softmax",
                  "--sigma-y", "1.0", "--out", "o.pt"])
    assert (cfg.lr, cfg.lr_milestones, cfg.sigma_y, cfg.epochs) == (2e-3, (), 1.0, 3)
    assert cfg.model["loc_activation"] == "softmax" and cfg.model["feature_dim"] == 16
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"epochs": 5, "batch_size": None, "model": {"cov_divisor": "N"}}))
    cfg = config(["train", "--system", "l96", "--sigma-y", "1.0", "--recipe", str(j), "--out", "o.pt"])
    assert cfg.epochs == 5 and cfg.batch_size == get_system("l96").train_batch and cfg.model["cov_divisor"] == "N"


def test_resume_takes_what_the_trunk_was_trained_with(tmp_path):
    """A trunk trained before the fine-tune rule changed resumes with the command that started it: its recorded
    batch, LR and data size win over the rule and the recipe file; a flag given still wins (the trainer then
    refuses it if it differs); without --resume, or without a trunk, the rule applies."""
    shipped = str(ROOT / "pretrained" / "l96_sigma1.0_N10.pt")
    trunk = tmp_path / "ft.pt"
    argv = ["finetune", "--recipe", "cpu-finetune", "--from", shipped, "--N", "100", "--out", str(trunk)]
    rule = config(argv)
    trunk.write_bytes(b"weights")
    trunk.with_suffix(".json").write_text(json.dumps({"recipe": {"batch_size": 8, "lr": 1e-5, "trajectories": 2048,
                                                                 "epochs": 20, "schedule": "cosine"}}))
    assert (rule.batch_size, rule.lr, rule.trajectories) != (8, 1e-5, 2048)
    resumed = config(argv + ["--resume"])
    assert (resumed.batch_size, resumed.lr, resumed.trajectories) == (8, 1e-5, 2048)
    assert (resumed.epochs, resumed.schedule) == (rule.epochs, rule.schedule)  # only what TRUNK_RECIPE names
    assert config(argv + ["--resume", "--batch-size", "4"]).batch_size == 4
    assert config(argv).batch_size == rule.batch_size


@pytest.mark.parametrize("name,text,message", [
    ("r.toml", 'epochs = 3\nfoo = 1\n', "unknown key 'foo' for daviz train (known: system, sigma_y, N,"),
    ("r.toml", 'epochs = 3\n[model]\nwidth = 8\n', "unknown key model.width"),
    ("r.toml", 'lr = "fast"\n', "lr must be a number, got 'fast'"),
    ("r.toml", 'epochs = 1.5\n', "epochs must be an integer, got 1.5"),
    ("r.json", '{"epochs": true}', "epochs must be an integer, got True"),
    ("r.toml", 'lr_milestones = 0.5\n', "lr_milestones must be a list of numbers, got 0.5"),
    ("r.toml", 'lr_milestones = ["a"]\n', "lr_milestones must be a list of numbers, got ['a']"),
    ("r.toml", 'schedule = "linear"\n', "schedule must be one of steps, cosine, wsd, got 'linear'"),
    ("r.toml", 'system = "foo"\n', "system must be one of"),
    ("r.toml", 'model = 3\n', "model must be a table of feature_dim"),
    ("r.toml", '[model]\nloc_activation = "relu"\n', "loc_activation must be one of sigmoid, softmax, got 'relu'"),
    ("r.toml", 'epochs 3\n', "not valid TOML"),
    ("r.json", '{"epochs": 3,}', "not valid JSON"),
    ("r.json", '[1, 2]', "a recipe is a JSON object of TrainConfig fields, got list"),
    ("r.json", '"epochs"', "a recipe is a JSON object of TrainConfig fields, got str"),
    ("r.toml", b'epochs = 3 # \xff\n', "cannot read recipe"),
    ("missing.toml", None, "no such file (shipped recipes: cpu-finetune, cpu-pretrain, cpu-warm, cpu-wsd)"),
    ("adir", "dir", "is a directory"),
])
def test_bad_recipe_one_line_status_2(tmp_path, capsys, no_training, name, text, message):
    path = tmp_path / name
    if text == "dir":
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    code = cli.main(["train", "--system", "l63", "--sigma-y", "1.0", "--recipe", str(path), "--out",
                     str(tmp_path / "t.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert err.startswith(f"daviz train: error: {'cannot read ' if 'cannot read' in message else ''}recipe {path}")
    assert "Traceback" not in err and not (tmp_path / "t.pt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_recipe(tmp_path, capsys, no_training):
    path = tmp_path / "r.toml"
    path.write_text("epochs = 3\n")
    path.chmod(0)
    code = cli.main(["train", "--system", "l63", "--sigma-y", "1.0", "--recipe", str(path), "--out", "t.pt"])
    assert code == 2 and "cannot read recipe" in capsys.readouterr().err


def test_finetune_recipe_cannot_set_what_the_checkpoint_fixes(tmp_path, capsys, no_training):
    path = tmp_path / "r.toml"
    path.write_text('system = "l96"\n')
    code = cli.main(["finetune", "--from", "x.pt", "--N", "5", "--recipe", str(path), "--out", str(tmp_path / "t.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "unknown key 'system' for daviz finetune" in err and "from the pretrained checkpoint" in err


def test_required_settings_from_the_recipe_or_the_command_line(tmp_path, capsys, no_training):
    path = tmp_path / "r.toml"
    path.write_text('system = "l63"\nsigma_y = 1.0\n')
    assert config(["train", "--recipe", str(path), "--out", "o.pt"]).system == "l63"
    code = cli.main(["train", "--sigma-y", "1.0", "--out", str(tmp_path / "t.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "the following arguments are required: --system" in err, err
    code = cli.main(["finetune", "--from", "x.pt", "--out", str(tmp_path / "t.pt")])
    assert code == 2 and "required: --N" in capsys.readouterr().err


def test_bad_recipe_from_a_shell_no_traceback(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"epochs": "ten"}')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for cmd in (["-m", "daviz.cli"], ["-m", "daviz.mnmef.commands"]):
        p = subprocess.run([sys.executable, *cmd, "train", "--system", "l63", "--sigma-y", "1", "--recipe", str(path),
                            "--out", str(tmp_path / "t.pt")], capture_output=True, text=True, env=env, cwd=ROOT)
        assert p.returncode == 2 and p.stderr.strip().endswith(f"error: recipe {path}: epochs must be an integer, "
                                                               "got 'ten'"), p.stderr
        assert "Traceback" not in p.stderr


# -- the shipped recipes -------------------------------------------------------------------------------------
def test_shipped_recipes_are_package_data():
    names = commands.shipped_recipes()
    assert names == ["cpu-finetune", "cpu-pretrain", "cpu-warm", "cpu-wsd"]
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["daviz"]
    for n in names:
        assert any(fnmatch.fnmatch(f"mnmef/recipes/{n}.toml", g) for g in globs), n
        assert commands.load_recipe(n, "finetune" if "finetune" in n else "train")


@pytest.fixture
def script_argv(tmp_path, monkeypatch):
    """Run scripts/train_cpu.sh with `daviz` and `python` stubbed out; returns its `daviz` command line."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    record = tmp_path / "argv"
    # python: the fine-tune's choice of start (scripts/compare_starts.py --best) answers "prior"
    python = 'case "$*" in *compare_starts.py*--best*) echo prior;; esac\nexit 0\n'
    for name, body in (("daviz", f'printf "%s\\0" "$@" > "{record}"\n'), ("python", python)):
        (stubs / name).write_text("#!/bin/sh\n" + body)
        (stubs / name).chmod(stat.S_IRWXU)
    monkeypatch.chdir(tmp_path)

    def run(*args, **script_env):
        env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", **script_env)
        subprocess.run(["bash", str(ROOT / "scripts" / "train_cpu.sh"), *map(str, args)], check=True, env=env,
                       cwd=tmp_path)
        return record.read_text().split("\0")[:-1]
    return run


RUNTIME = ("out", "resume", "threads", "checkpoint_minutes", "no_progress", "until_step", "budget_seconds", "device",
           "step_mode", "sync_every", "from", "command")


# The old command lines ran before observation noise was redrawn per batch (now the default): they trained on one
# fixed draw per chain, which the flag below says explicitly, as the recipes do.
FIXED_NOISE = ["--redraw-obs-noise", "false"]


def same_run(old, new):
    """The TrainConfig and every run flag of the old command line equal the new one's."""
    a, b = parse(old + FIXED_NOISE), parse(new)
    assert b.recipe and not a.recipe
    assert {k: getattr(a, k, None) for k in RUNTIME} == {k: getattr(b, k, None) for k in RUNTIME}
    assert dataclasses.asdict(commands.build_config(a)) == dataclasses.asdict(commands.build_config(b))
    return commands.build_config(b)


@pytest.mark.parametrize("sys_,sy,until", [("l96", "1.0", 500), ("ks", "0.7", 3000)])
def test_train_cpu_wsd_recipe_as_before(script_argv, sys_, sy, until):
    new = script_argv("wsd", sys_, sy, until)
    note = new[new.index("--note") + 1]
    old = ["train", "--system", sys_, "--sigma-y", sy, "--N", "10", "--trajectories", "2048", "--batch-size", "64",
           "--epochs", "94", "--max-steps", "3000", "--schedule", "wsd", "--warmup-steps", "20", "--until-step",
           str(until), "--threads", "1", "--checkpoint-minutes", "3", "--no-progress", "--note", note,
           "--out", f"runs/{sys_}_s{sy}_N10_wsd.pt", "--resume",
           "--loc-activation", "softmax"]  # the library default when these weights were trained
    cfg = same_run(old, new)
    assert (cfg.schedule, cfg.max_steps, cfg.batch_size, cfg.warmup_steps) == ("wsd", 3000, 64, 20)
    assert cfg.model["loc_activation"] == "softmax"


@pytest.mark.parametrize("sys_,sy,epochs,batch", [("l96", "0.7", 8, 64), ("l63", "1.0", 2, 32)])
def test_train_cpu_pretrain_recipe_as_before(script_argv, sys_, sy, epochs, batch):
    new = script_argv("pretrain", sys_, sy, epochs, batch)
    note = new[new.index("--note") + 1]
    old = ["train", "--system", sys_, "--sigma-y", sy, "--N", "10", "--trajectories", "2048", "--batch-size",
           str(batch), "--epochs", str(epochs), "--weight-decay", "0", "--loc-activation", "sigmoid", "--threads", "1",
           "--checkpoint-minutes", "3", "--no-progress", "--note", note, "--out", f"runs/{sys_}_s{sy}_N10.pt", "--resume"]
    cfg = same_run(old, new)
    assert cfg.weight_decay == 0.0 and cfg.model["loc_activation"] == "sigmoid" and cfg.batch_size == batch


def shipped_n10_weights(root, sys_, pre_lr):
    """A small pretrained/SYSTEM_sigma1.0_N10.pt under root, as the fine-tune script expects it."""
    src = root / "pretrained" / f"{sys_}_sigma1.0_N10.pt"
    src.parent.mkdir()
    model = ModelConfig(feature_dim=16, loc_activation="sigmoid")
    pre = TrainConfig(system=sys_, sigma_y=1.0, N=10, trajectories=2048, batch_size=64, model=model.to_dict())
    torch.manual_seed(0)
    ckpt.save(src, train_mod.export_payload(MNMEF(get_system(sys_), 1.0, model), pre),
              {"recipe": {"trajectories": 2048, "batch_size": 64, "cycles": 60, "lr": pre_lr}})


@pytest.mark.parametrize("sys_,pre_lr,N,batch", [("l63", 1e-3, 20, 64), ("l63", 1e-3, 40, 32), ("ks", 5e-4, 100, 16)])
def test_train_cpu_finetune_follows_the_one_rule(script_argv, tmp_path, sys_, pre_lr, N, batch):
    """The script's fine-tune takes size, LR and batch from finetune_config's rule (the fixed LR 1e-4 and batch
    32/16 of the old script were a second rule, wrong for KS): half the pretraining windows, a tenth of its LR,
    20 epochs, its batch halved at N >= 40 and quartered at N >= 100; the N's EnKF prior swapped in."""
    shipped_n10_weights(tmp_path, sys_, pre_lr)
    new = script_argv("finetune", sys_, "1.0", N, 600)
    cfg = commands.build_config(parse(new))
    note = new[new.index("--note") + 1]
    assert cfg == finetune_config(f"pretrained/{sys_}_sigma1.0_N10.pt", N, warm_start="prior", schedule="wsd",
                                  warmup_steps=50, recipe_note=note)
    assert (cfg.trajectories, cfg.lr, cfg.batch_size, cfg.epochs) == (1024, pytest.approx(pre_lr / 10), batch, 20)
    assert cfg.warm_start == "prior" and cfg.model["loc_activation"] == "sigmoid"  # the best start, as compared
    args = parse(new)
    assert (args.budget_seconds, args.out, args.resume) == (600, f"pretrained/train_state/{sys_}_s1.0_ft{N}.pt", True)


def test_train_cpu_finetune_experiment_keeps_its_own_trunk(script_argv, tmp_path):
    """TAG names the trunk of an experiment (another seed, another gradient window) so it never resumes, or
    overwrites, the main trunk of that N; SEED, GRAD_WINDOW and UNFREEZE reach the command line."""
    shipped_n10_weights(tmp_path, "l63", 1e-3)
    args = parse(script_argv("finetune", "l63", "1.0", 20, 600, TAG="gw8", SEED="7", GRAD_WINDOW="8", UNFREEZE="1"))
    assert args.out == "pretrained/train_state/l63_s1.0_ft20_gw8.pt"
    cfg = commands.build_config(args)
    assert (cfg.seed, cfg.grad_window, cfg.train_set_transformer) == (7, 8, True)
    plain = commands.build_config(parse(script_argv("finetune", "l63", "1.0", 20, 600)))
    assert (plain.seed, plain.grad_window, plain.train_set_transformer) == (42, 1, False)
