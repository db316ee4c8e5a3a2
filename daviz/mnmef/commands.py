"""`daviz train` and `daviz finetune` subcommands; `register(subparsers)` is called by daviz/cli.py.

Also runnable alone: `python -m daviz.mnmef.commands train --system l96 ...` (and under torchrun).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ..systems import SYSTEM_NAMES
from .step import MODES
from .train import SCHEDULES, TrainConfig, branch_path, finetune_config, train


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help="epochs (pretrain default 1000, fine-tune 20)")
    p.add_argument("--trajectories", type=int, help="training windows per epoch (8192; fine-tune: half)")
    p.add_argument("--cycles", type=int, help="assimilation cycles per window (60)")
    p.add_argument("--batch-size", type=int, help="Table C.8: l96 512, ks 256, l63 1024")
    p.add_argument("--lr", type=float, help="Table C.8: 1e-3 (ks 5e-4); fine-tune: a tenth")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-2, paper App. C; authors' code: 0)")
    p.add_argument("--lr-milestones", type=float, nargs="*", help="fractions of the epochs where the LR halves (0.2 0.3 0.4)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="LR schedule: steps (halve at the milestones; default), cosine, or wsd (warm-up, constant, "
                        "decay over the last --decay-fraction; a run cut short also writes OUT_decayed.pt)")
    p.add_argument("--warmup-steps", type=int, help="linear LR warm-up steps (default 0)")
    p.add_argument("--decay-fraction", type=float, help="wsd: fraction of the steps in the final decay (0.2)")
    p.add_argument("--max-steps", type=int, help="total optimizer steps of the recipe (default: epochs x batches)")
    p.add_argument("--until-step", type=int, help="stop this run at this global step (wsd: decay a branch to end there)")
    p.add_argument("--budget-seconds", type=float, help="stop this run after this wall time (wsd: decay a branch to fit)")
    p.add_argument("--step-mode", default="auto", choices=("auto",) + MODES,
                   help="auto: eager on CPU, a captured CUDA graph on GPU; compile(+graph): torch.compile'd cycles")
    p.add_argument("--sync-every", type=int, help="read the loss back every this many steps (default: 1 on CPU, 50 on CUDA)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--note", default=None, help="recipe note recorded in the metadata")
    p.add_argument("--out", required=True, help="training checkpoint to write (a .json sidecar goes beside it)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, ...")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--no-progress", action="store_true")


def _overrides(a) -> dict:
    keys = ("epochs", "trajectories", "cycles", "batch_size", "lr", "weight_decay", "seed", "schedule",
            "warmup_steps", "decay_fraction", "max_steps")
    kw = {k: getattr(a, k) for k in keys if getattr(a, k) is not None}
    if a.lr_milestones is not None:
        kw["lr_milestones"] = tuple(a.lr_milestones)
    if a.note:
        kw["recipe_note"] = a.note
    return kw


def _run(cfg: TrainConfig, a) -> int:
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


def cmd_train(a) -> int:
    if a.feature_dim is not None and a.feature_dim < 1:
        raise ValueError(f"--feature-dim must be >= 1, got {a.feature_dim}")
    model = {"feature_dim": a.feature_dim, "loc_activation": a.loc_activation, "inflation_at": a.inflation_at,
             "cov_divisor": a.cov_divisor}
    cfg = TrainConfig(system=a.system, sigma_y=a.sigma_y, N=a.N, model=model, grad_window=a.grad_window, **_overrides(a))
    return _run(cfg, a)


def cmd_finetune(a) -> int:
    return _run(finetune_config(getattr(a, "from"), a.N, **_overrides(a)), a)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="pretrain MNMEF on synthetic trajectories (paper §4.3)")
    p.add_argument("--system", required=True, choices=SYSTEM_NAMES)
    p.add_argument("--sigma-y", type=float, required=True)
    p.add_argument("--N", type=int, default=10)
    p.add_argument("--feature-dim", type=int, default=64, help="f_v width: 64 (paper Table C.7) or 128 (authors' code)")
    p.add_argument("--loc-activation", choices=("sigmoid", "softmax"), default="softmax",
                   help="g_θ = 2·softmax (paper, default) or 2·sigmoid (authors' code; the shipped weights)")
    p.add_argument("--inflation-at", choices=("forecast", "analysis"), default="forecast")
    p.add_argument("--cov-divisor", choices=("N-1", "N"), default="N-1")
    p.add_argument("--grad-window", type=int, default=1, help="detach the ensemble every this many cycles")
    _common(p)
    p.set_defaults(func=cmd_train, run=cmd_train)
    f = subparsers.add_parser("finetune", help="fine-tune the MNMEF heads for another ensemble size (paper §4.4)")
    f.add_argument("--from", required=True, help="pretrained checkpoint")
    f.add_argument("--N", type=int, required=True)
    _common(f)
    f.set_defaults(func=cmd_finetune, run=cmd_finetune)


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
