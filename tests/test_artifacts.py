"""daviz.artifacts: the one implementation of atomic writes, safe torch loading, sidecars and provenance."""
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from daviz import artifacts
from daviz.artifacts import CheckpointError, FileKind, atomic_write, check_writable, load_torch, read_meta

WEIGHTS = FileKind("Toy", "toy-1", missing="make one", redo="make it again")
CHECKPOINT = FileKind("Toy", "toy-1", missing="make one", redo="make it again", called="checkpoint",
                      noun="checkpoint", plural=False)


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "table.json"
    artifacts.write_text(path, "old")

    def half_then_crash(tmp):
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]
    atomic_write(tmp_path / "sub" / "new.bin", lambda tmp: tmp.write_bytes(b"x"))  # makes the folder
    assert (tmp_path / "sub" / "new.bin").read_bytes() == b"x" and len(list((tmp_path / "sub").iterdir())) == 1


HOLDER = """
import json, sys
from daviz.artifacts import folder_locked, write_text
path = sys.argv[1]
with folder_locked(sys.argv[2]):
    doc = json.load(open(path))
    print("read", flush=True)
    sys.stdin.readline()  # the test lets this writer finish only after the other has tried to write
    doc["rows"].append("B")
    write_text(path, json.dumps(doc))
"""


def test_update_json_loses_no_row_of_a_writer_beside_it(tmp_path):
    """Two fine-tunes compared their starts side by side and one's rows were lost: each wrote back what it had
    read. Another process reads the file under the folder lock and writes only when told; an update_json made
    meanwhile must wait for it and then re-read, so both rows stay."""
    path = tmp_path / "starts.json"
    artifacts.update_json(path, lambda doc: None, lambda: {"rows": []})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "read"
        writer = threading.Thread(target=artifacts.update_json,
                                  args=(path, lambda doc: doc["rows"].append("A"), lambda: {"rows": []}))
        writer.start()
        writer.join(timeout=1.0)  # without the lock it writes now, and the holder's write below would lose "A"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
        writer.join()
    finally:
        holder.kill()
    assert sorted(json.loads(path.read_text())["rows"]) == ["A", "B"]


def test_code_version_has_one_format():
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", artifacts.code_version())


@pytest.mark.parametrize("case,singular,plural", [
    ("missing", "Toy checkpoint {} does not exist: make one", "Toy weights {} do not exist: make one"),
    ("empty", "Toy checkpoint {} is empty: make it again", "Toy weights {} are empty: make it again"),
    ("corrupt", "Toy checkpoint {} is corrupt or not a torch checkpoint (", "Toy weights {} are corrupt or not a "
                                                                            "torch file ("),
    ("foreign", "Toy checkpoint {} is not a toy-1 checkpoint: make it again", "Toy weights {} are not a toy-1 file: "
                                                                             "make it again"),
    ("pickle", "Toy checkpoint {} is corrupt or not a torch checkpoint (", "Toy weights {} are corrupt or not a "
                                                                           "torch file ("),
])
def test_torch_files_load_safely_with_one_line_errors(tmp_path, case, singular, plural):
    path = tmp_path / "w.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(b"not a zip file at all")
    elif case == "foreign":
        torch.save({"format": "other-1"}, path)
    elif case == "pickle":  # arbitrary objects are refused by weights_only loading: no code runs
        torch.save({"format": "toy-1", "obj": Path("evil")}, path)
    for kind, expected in ((CHECKPOINT, singular), (WEIGHTS, plural)):
        with pytest.raises(CheckpointError) as err:
            load_torch(path, kind)
        message = str(err.value)
        assert message.startswith(expected.format("w.pt")) and "\n" not in message and str(tmp_path) not in message
        assert err.value.path == str(path)


def test_torch_round_trip_and_sidecars(tmp_path):
    path = tmp_path / "w.pt"
    artifacts.save_torch(path, {"format": "toy-1", "w": torch.ones(2)})
    assert load_torch(path, WEIGHTS)["w"].tolist() == [1.0, 1.0]
    assert read_meta(path, "Toy", "redo") == {}
    artifacts.write_meta(path, {"b": 1, "a": [2]})
    assert read_meta(path, "Toy", "redo") == {"a": [2], "b": 1}
    artifacts.sidecar_path(path).write_text("[1]")
    with pytest.raises(CheckpointError, match="Toy sidecar w.json holds a JSON array, not an object: restore it or redo"):
        read_meta(path, "Toy", "redo")


def test_output_paths_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=f"--out {tmp_path} is a folder, not a file"):
        check_writable(tmp_path, "--out")
    with pytest.raises(ValueError, match="folder .*missing does not exist"):
        check_writable(tmp_path / "missing" / "x.pt", "--out")
    check_writable(tmp_path / "made" / "deeper" / "x.pt", "--out", make_folder=True)
    assert (tmp_path / "made" / "deeper").is_dir() and not list((tmp_path / "made" / "deeper").iterdir())
    with pytest.raises(ValueError, match="cannot write there"):
        check_writable("/proc/daviz-no-such-dir/x.pt", "--out", make_folder=True)


def test_importing_artifacts_does_not_import_torch():
    code = "import sys, daviz.artifacts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
