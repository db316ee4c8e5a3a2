"""Files the methods write and read back: torch weights, JSON sidecars, tables, and their provenance.

Weights and training states are torch files read with torch.load(weights_only=True), so loading runs no
code; next to each a JSON sidecar (same name, .json) holds what rebuilding the model does not need
(command, code version, hardware, evaluation figures). Every problem with such a file raises
CheckpointError (a ValueError) with a one-line message: what is wrong, with which file (its name only; the
full path is in `.path`), and what to do. Every write goes through `atomic_write`, so a crash never leaves
half a file. Torch is imported only by the functions that need it: the numpy paths stay torch-free.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (code_version asks git here)
# The shipped weights; DAVIZ_PRETRAINED_DIR points the app and `daviz evaluate` at another folder of weights.
PRETRAINED_DIR = Path(os.environ.get("DAVIZ_PRETRAINED_DIR") or ROOT / "pretrained")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the request; the message names the file."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def shown(path) -> str:
    """How messages name a file: as given when relative, else by its name only (no long absolute paths)."""
    path = Path(path)
    return path.name if path.is_absolute() else str(path)


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def atomic_write(path, write) -> None:
    """write(tmp) then rename over `path`: a crash mid-write never leaves a truncated file, and a failed
    write leaves no temporary one (hidden, one per process: writers in other processes do not collide)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    """`text` into `path`, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def folder_locked(directory):
    """An exclusive lock on `directory` for one read-modify-write of a file in it. Jobs that run side by side
    (tuners, fine-tunes comparing their starts) would otherwise each write back what they had read and lose the
    other's rows. An flock is released when its descriptor closes, so also when the process dies."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def update_json(path, change, empty) -> dict:
    """Re-read the JSON document at `path` (`empty()` when there is none), apply `change(doc)` and write it back
    atomically, all under the folder's lock; returns the document as written."""
    path = Path(path)
    with folder_locked(path.parent):
        doc = json.loads(path.read_text()) if path.is_file() else empty()
        change(doc)
        write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc


def add_evaluation(meta: dict, evaluation: dict) -> dict:
    """`evaluation`'s entries merged into meta["evaluation"] (a malformed entry there is replaced, not a crash)."""
    if not isinstance(meta.get("evaluation"), dict):
        meta["evaluation"] = {}
    meta["evaluation"].update(evaluation)
    return meta


def write_meta(path, meta: dict) -> None:
    """The JSON sidecar next to `path` (atomic)."""
    write_text(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(path, what: str, redo: str) -> dict:
    """The JSON sidecar next to `path` (a JSON object), or {} when there is none; a broken one raises
    CheckpointError naming the file, `what` it belongs to and what to do (`redo`)."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    name = shown(side)
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} sidecar {name} is not valid JSON ({type(exc).__name__} at position "
                              f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))}): restore it or {redo}",
                              side) from None
    except OSError as exc:
        raise CheckpointError(f"{what} sidecar {name} cannot be read ({exc.strerror}): check its permissions",
                              side) from None
    if not isinstance(meta, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(meta), "null")
        raise CheckpointError(f"{what} sidecar {name} holds a JSON {kind}, not an object: restore it or {redo}", side)
    return meta


@dataclass(frozen=True)
class FileKind:
    """One kind of torch file (MNMEF checkpoints, NIDA weights, ...) and how its errors read:
    "<owner> <called> <name> ..." ("MNMEF checkpoint x.pt is empty", "NIDA weights y.pt are empty")."""

    owner: str  # the method, e.g. "MNMEF"
    format: str  # the tag every file of this kind carries under "format"
    missing: str  # what to do when the file does not exist
    redo: str  # what to do with a broken file
    called: str = "weights"  # how messages call a file
    noun: str = "file"  # what a broken one is not: "not a torch <noun>", "not a <format> <noun>"
    plural: bool = True  # "weights ... are", "checkpoint ... is"

    def problem(self, path, what: str) -> CheckpointError:
        """'<owner> <called> <name> <what>: <redo>'."""
        return CheckpointError(f"{self.owner} {self.called} {shown(path)} {what}: {self.redo}", path)

    def unfit(self, path, exc: Exception) -> CheckpointError:
        """The file's weights do not fit the model they describe (`exc` from building or loading it)."""
        detail = (str(exc).strip().splitlines() or [""])[0][:120]
        return self.problem(path, f"{'do' if self.plural else 'does'} not fit the model ({type(exc).__name__}: "
                                  f"{detail})")


def load_torch(path, kind: FileKind, map_location="cpu") -> dict:
    """A torch file of `kind` read safely (weights_only=True: no code runs), as the dict it holds; missing,
    unreadable, empty, corrupt or foreign (no dict, or another format tag) files raise CheckpointError."""
    import torch  # only the methods with weights need it

    path = Path(path)
    name, is_are = shown(path), "are" if kind.plural else "is"
    if not path.is_file():
        raise CheckpointError(f"{kind.owner} {kind.called} {name} {'do' if kind.plural else 'does'} not exist: "
                              f"{kind.missing}", path)
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise CheckpointError(f"{kind.owner} {kind.called} {name} cannot be read ({exc.strerror}): check its "
                              "permissions", path) from None
    if empty:
        raise kind.problem(path, f"{is_are} empty")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler-policy errors all mean "not a usable file"
        raise kind.problem(path, f"{is_are} corrupt or not a torch {kind.noun} ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != kind.format:
        raise kind.problem(path, f"{is_are} not a {kind.format} {kind.noun}")
    return data


def save_torch(path, payload: dict) -> None:
    """torch.save(payload), atomically."""
    import torch

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def check_writable(path, flag: str, make_folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work (ValueError naming `flag`, e.g.
    "--out"). The folder must exist, unless `make_folder` creates it (and its parents)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a file")
    try:
        if make_folder:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise ValueError(f"{flag} {path}: " + (f"{folder} is not a folder" if folder.exists() else
                                                    f"folder {folder} does not exist"))
        # a real write, since os.access() says yes to root on read-only mounts and /proc
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".daviz-write-test-")
        os.close(fd)
        os.unlink(probe)
        if path.exists():
            open(path, "ab").close()  # appends nothing: just asks for write permission on the file
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None


def code_version() -> str:
    """git commit of the working tree (+ '-dirty' with local changes), or 'unknown'."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        rev, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain")
        return (rev + ("-dirty" if dirty else "")) or "unknown"
    except Exception:
        return "unknown"


def hardware(device) -> str:
    """What a run ran on: the GPU's name, or the CPU and torch's threads (with torch's version)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) "
            f"(torch {torch.__version__})")
