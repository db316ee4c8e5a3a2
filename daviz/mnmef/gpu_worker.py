"""One GPU-run worker: pretrain one (system, sigma_y) from its trunk, fine-tune every N, evaluate (daviz.mnmef.gpu).

The recipes of the GPU run live here: Table C.8 data, batch and LR with a warm start and a wsd schedule for the
pretrain, the fine-tune rule of daviz.mnmef.train_config.finetune_config for every N in FT_NS.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

PAIRS = (("l96", 1.0), ("l96", 0.7), ("ks", 1.0), ("ks", 0.7), ("l63", 1.0), ("l63", 0.7))
FT_NS = (5, 15, 20, 40, 60, 100)
EVAL_NS = (5, 10, 15, 20, 40, 60, 100)
TOY_MODEL = {"feature_dim": 8, "width": 8, "heads": 2, "seeds": 2, "head_width": 8, "loc_activation": "sigmoid"}  # a few thousand weights


def stem(system: str, sigma_y: float) -> str:
    return f"{system}_sigma{sigma_y}_N10"



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)



# -- recipes -------------------------------------------------------------------------------------------------
def pretrain_config(system: str, sigma_y: float, toy: bool):
    from .train import TrainConfig, table_c8
    if toy:
        return TrainConfig(system=system, sigma_y=sigma_y, N=10, epochs=1000, trajectories=8, cycles=4, batch_size=4,
                           chains=4, schedule="wsd", warmup_steps=2, model=TOY_MODEL, warm_start="enkf",
                           recipe_note="toy run of scripts/train_gpu.sh (CI size; not for use)")
    lr, batch = table_c8(system)
    total = 1000 * (8192 // batch)
    return TrainConfig(system=system, sigma_y=sigma_y, N=10, epochs=1000, trajectories=8192, cycles=60, batch_size=batch,
                       lr=lr, weight_decay=1e-2, schedule="wsd", warmup_steps=max(1, total // 100), decay_fraction=0.2,
                       warm_start="enkf", model={"loc_activation": "sigmoid"},
                       recipe_note=("scripts/train_gpu.sh: Table C.8 data, batch and LR (8192 windows x 60 cycles, "
                                    f"1000 epochs = {total} steps), warm start from the tuned localized EnKF (g = "
                                    "2·sigmoid), AdamW weight decay 1e-2, wsd schedule (1% warm-up, "
                                    "constant LR, cosine decay over the last 20%); a run cut short by its time budget "
                                    "decays a branch from its trunk (progress/schedule say where)"))



def finetune_cfg(pretrained: Path, N: int, toy: bool):
    from .train import finetune_config
    return finetune_config(pretrained, N, schedule="wsd", warmup_steps=0, decay_fraction=0.2, warm_start="enkf", recipe_note=(
        "toy fine-tune (CI size)" if toy else
        "scripts/train_gpu.sh fine-tune: the rule of daviz.mnmef.train_config.finetune_config (paper §4.4), the N's "
        "EnKF prior swapped in, with a wsd schedule cut to the run's time budget"))



# -- the worker: one (system, sigma_y) -----------------------------------------------------------------------
def worker(a) -> int:
    import torch

    from . import checkpoint as ckpt
    from .quickeval import evaluate_file
    from .train import branch_path, train

    torch.set_num_threads(a.threads)
    work, state_dir = Path(a.work), Path(a.state_dir)
    export = work / "export"
    export.mkdir(parents=True, exist_ok=True)
    name = stem(a.system, a.sigma_y)
    status = {"system": a.system, "sigma_y": a.sigma_y, "errors": [], "finetunes": {}, "eval": []}
    status_path = work / "status" / f"{name}.json"
    status_path.parent.mkdir(parents=True, exist_ok=True)

    def write_status():
        status_path.write_text(json.dumps(status, indent=1) + "\n")

    def used(meta):
        keys = ("progress", "schedule", "step_mode", "step_fallbacks", "trajectory_cycles_per_second_this_run",
                "steps_per_second_this_run", "training_seconds")
        return {k: meta.get(k) for k in keys}

    dev = "cpu" if a.toy else "cuda"
    try:  # 1. pretrain (resumed trunk) and export
        cfg = pretrain_config(a.system, a.sigma_y, a.toy)
        trunk = state_dir / f"{name}.pt"
        start_step = None
        if trunk.is_file():
            try:
                d = ckpt.load(trunk)
                start_step = int(d["epoch"]) * cfg.batches_per_epoch + int(d["batch"])
            except Exception as exc:  # noqa: BLE001 - an unusable trunk: start afresh, say so
                status["errors"].append(f"trunk {trunk} unusable, starting afresh: {exc}")
                trunk.unlink()
        until = (start_step or 0) + a.pretrain_steps if a.pretrain_steps else None
        meta = train(cfg, trunk, resume=True, device=dev, mode=a.mode, progress=False, checkpoint_minutes=2,
                     budget_seconds=None if until else max(5.0, a.pretrain_until - time.time()), until_step=until)
        best = branch_path(trunk) if meta["progress"]["kind"] == "decayed branch" else trunk
        ckpt.export_weights(best, export / f"{name}.pt")
        status["pretrain"] = {"resumed_from_step": start_step, **used(meta), "exported": best.name}
        log(f"{name}: pretrain step {meta['progress']['step']}/{meta['progress']['total_steps']} "
            f"({meta['progress']['kind']}), mode {meta['step_mode']}, "
            f"{meta.get('trajectory_cycles_per_second_this_run')} traj-cycles/s")
    except Exception as exc:  # noqa: BLE001 - recorded; the other workers go on
        status["errors"].append(f"pretrain: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        write_status()
        return 1
    write_status()

    pre = export / f"{name}.pt"
    for i, N in enumerate(FT_NS):  # 2. fine-tunes, sharing what is left of the phase equally
        left = a.finetune_until - time.time()
        if left < 2:
            status["finetunes"][str(N)] = {"skipped": "no time left"}
            write_status()
            continue
        out = work / "ft" / f"{name}_ft{N}.pt"
        for p in (out, out.with_suffix(".json"), branch_path(out), branch_path(out).with_suffix(".json")):
            p.unlink(missing_ok=True)  # fresh: the pretrained model changed since any earlier run
        try:
            meta = train(finetune_cfg(pre, N, a.toy), out, device=dev, mode=a.ft_mode, progress=False,
                         checkpoint_minutes=5, until_step=a.finetune_steps or None,
                         budget_seconds=None if a.finetune_steps else left / (len(FT_NS) - i))
            best = branch_path(out) if meta["progress"]["kind"] == "decayed branch" else out
            ckpt.export_weights(best, export / f"{name}_ft{N}.pt")
            status["finetunes"][str(N)] = used(meta)
        except Exception as exc:  # noqa: BLE001
            status["finetunes"][str(N)] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        write_status()

    for N in EVAL_NS:  # 3. quick held-out evaluation
        f = export / (f"{name}.pt" if N == 10 else f"{name}_ft{N}.pt")
        if time.time() > a.eval_until or not f.is_file():
            status["eval"].append({"N": N, "skipped": "no time left" if f.is_file() else "no weights"})
            continue
        try:
            row = evaluate_file(f, N, device=dev, trajectories=a.eval_trajectories, cycles=a.eval_cycles,
                                purpose="test", seed=0)
            status["eval"].append(row)
        except Exception as exc:  # noqa: BLE001
            status["eval"].append({"N": N, "error": f"{type(exc).__name__}: {exc}"})
        write_status()
    write_status()
    return 0

