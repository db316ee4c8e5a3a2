"""The GPU run's smoke test (about 30 s on a GPU): anything that would spoil the run stops it with one line."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path


class SmokeFailure(RuntimeError):
    pass



def smoke(a, work: Path, state_dir: Path, required: tuple) -> dict:
    """About 30 s on a GPU. Raises SmokeFailure(one line) on anything that would spoil the run."""
    t0 = time.time()
    report = {"warnings": []}
    missing = []
    for mod in required:
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise SmokeFailure(f"missing Python packages {missing}: give scripts/train_gpu.sh a wheel folder (--wheels DIR; "
                           "README of scripts/train_gpu.sh says how to build it with pip download)")
    import torch
    torch.set_num_threads(a.threads)  # oversubscribed CPU threads make small steps many times slower

    from . import checkpoint as ckpt
    from .model import MNMEF, ModelConfig
    from .rollout import RolloutLoss
    from .step import TrainStep, make_optimizer
    from .train import TrainConfig, epoch_windows, make_data, train
    from ..systems import get_system
    if "panel" in sys.modules:
        report["warnings"].append("panel was imported by the training code (harmless, but slow)")
    report["python"], report["torch"] = sys.version.split()[0], torch.__version__
    if a.toy:
        dev = torch.device("cpu")
        report["device"] = "CPU (toy run: CUDA features off, captured step rehearsed eagerly)"
    else:
        if not torch.cuda.is_available():
            raise SmokeFailure("no CUDA GPU visible to torch (run with --toy for the CPU rehearsal)")
        dev = torch.device("cuda")
        free, total = torch.cuda.mem_get_info()
        report["device"] = f"{torch.cuda.get_device_name()} ({total / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free)"
        if free < 24 * 2**30:
            raise SmokeFailure(f"only {free / 2**30:.1f} GiB GPU memory free; six workers need about 24 GiB")
    for d in (Path(a.out), work, state_dir):
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            raise SmokeFailure(f"cannot write to {d}: {exc.strerror}") from None
    free_disk = shutil.disk_usage(work).free
    if free_disk < 2 * 2**30:
        raise SmokeFailure(f"only {free_disk / 2**30:.1f} GiB disk free in {work}")
    for f in state_dir.glob("*_N10.pt"):
        try:
            ckpt.load(f)
        except Exception as exc:  # noqa: BLE001
            report["warnings"].append(f"trunk state {f.name} is unusable and will be restarted: {exc}")

    # eager vs captured step, from one start, on this device: same parameters
    torch.manual_seed(0)
    cfg = TrainConfig(system="l96", sigma_y=1.0, N=5, trajectories=16, cycles=6, batch_size=8, chains=4, epochs=1,
                      model={"feature_dim": 16})
    truth, obs = make_data(cfg)
    truth = torch.as_tensor(truth, dtype=torch.float32, device=dev)
    obs = torch.as_tensor(obs, dtype=torch.float32, device=dev)
    finals = {}
    for mode in ("eager", "graph"):
        torch.manual_seed(0)
        model = MNMEF(get_system("l96"), 1.0, ModelConfig(feature_dim=16)).to(dev)
        opt = make_optimizer(list(model.parameters()), 1e-3, 1e-2, dev)
        st = TrainStep(RolloutLoss(model, 5), model, opt, truth, obs, 6, 8, 16, mode=mode)
        st.set_windows(epoch_windows(cfg, truth.shape[0], 0))
        for b in range(3):
            stats = st.step(b % 2, 10 + b, 1e-3).cpu()
            if not torch.isfinite(stats).all() or stats[3] != 0:
                raise SmokeFailure(f"{mode} training step gave non-finite results {stats.tolist()}")
        if st.fallbacks:
            report["warnings"].append(f"graph capture fell back: {st.fallbacks}")
        finals[mode] = [q.detach().cpu() for q in model.parameters()]
    diff = max(float((x - y).abs().max()) for x, y in zip(finals["eager"], finals["graph"]))
    report["eager_vs_graph_max_param_diff"] = diff
    report["graph_ok"] = diff <= 1e-5
    if not report["graph_ok"]:  # the run still trains, eagerly: a device gets one try, so this must not end it
        report["warnings"].append(f"captured and eager steps disagree (max parameter difference {diff:.2e} > 1e-5): "
                                  "the run trains eagerly")

    # exact resume of the captured step (the property successive GPU runs rely on)
    tmp = Path(tempfile.mkdtemp(dir=work))
    kw = dict(device=str(dev), mode="graph" if report["graph_ok"] else "eager", progress=False)
    rcfg = dict(system="l96", sigma_y=1.0, N=5, trajectories=16, cycles=6, batch_size=8, chains=4, epochs=2,
                model={"feature_dim": 16})
    train(TrainConfig(**rcfg), tmp / "full.pt", **kw)
    train(TrainConfig(**rcfg), tmp / "part.pt", stop_after_batches=2, **kw)
    train(TrainConfig(**rcfg), tmp / "part.pt", resume=True, **kw)
    wa, wb = ckpt.load(tmp / "full.pt")["model"], ckpt.load(tmp / "part.pt")["model"]
    rdiff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    report["resume_max_param_diff"] = rdiff
    if rdiff > 1e-5:  # the weights are still good; only a later run's continuation is not bitwise the same
        report["warnings"].append(f"resume is not exact on this device (max parameter difference {rdiff:.2e})")
    elif rdiff > 0:
        report["warnings"].append(f"resume exact only to {rdiff:.1e} on this device (not bitwise)")

    # one captured step per system (FFT, solves of every size)
    for system in ("ks", "l63"):
        c = TrainConfig(system=system, sigma_y=1.0, N=5, trajectories=8, cycles=3, batch_size=8, chains=4, epochs=1,
                        model={"feature_dim": 16})
        m = train(c, tmp / f"{system}.pt", mode=kw["mode"], progress=False, device=str(dev))
        if m["step_fallbacks"]:
            report["warnings"].append(f"{system}: graph capture fell back: {m['step_fallbacks']}")
    shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 1)
    return report

