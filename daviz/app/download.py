"""*Download this run (.npz)*: the recorder's window with every setting and the code version."""
from __future__ import annotations

import datetime as _dt
import io
import subprocess
from pathlib import Path

from .. import __version__


def code_version() -> str:
    """'daviz 0.x (abc1234)': the package version and, in a git checkout, the commit."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"daviz {__version__}" + (f" ({commit})" if commit else "")


def run_file(state) -> io.BytesIO | None:
    """The session's window as a `.npz` file, or None (with a message) when nothing runs."""
    if state.recorder is None:
        state.message = "nothing to download: no experiment is running"
        return None
    settings = {**state.settings(), "cycle": state.cycle, "window": state.window, "code_version": code_version(),
                "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "runs": [s.label for s in state.runs], "mnmef": state.mnmef.text}
    return io.BytesIO(state.recorder.to_npz(settings))
