"""One run per output folder (issue 18): an advisory lock taken before any work, and clean-ups that
remove only the temporaries of writers that are gone (checkpoints, plots, toy generation,
extraction)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import types

import pytest
from conftest import PROJECT_ROOT

import demo
from data_prep.toy import ToyOptions, generate_toy_dataset
from legacy_compat import atomic
from legacy_compat.cli import run_cli
from legacy_compat.runlock import FolderBusyError, folder_lock, lock_holder
from reproduce.training import checkpoints as ckpt

SMALL = ["--quick", "--toy-images", "10", "--epochs", "1", "--no-draw"]


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_folder_is_refused_at_once_naming_the_folder_and_the_process(tmp_path, capsys):
    out = tmp_path / "out"
    with folder_lock(out, command="python demo.py --quick"):
        assert demo.main(SMALL + ["--out", str(out), "--data-root", str(tmp_path / "data")]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another run, process {os.getpid()}" in err and "--out" in err
        assert "Traceback" not in err and not (tmp_path / "data").exists()        # nothing was done
        with pytest.raises(FolderBusyError):
            with folder_lock(out):
                pass
    with folder_lock(out):                              # released with its holder
        assert lock_holder(out)["pid"] == os.getpid()


def test_two_runs_on_one_folder_the_second_refused_the_first_as_a_lone_run(tmp_path, capsys):
    data = tmp_path / "data"
    assert demo.main(SMALL + ["--out", str(tmp_path / "lone"), "--data-root", str(data)]) == 0
    lone = capsys.readouterr().out.strip().splitlines()[-2]
    out = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, "demo.py", *SMALL, "--out", str(out), "--data-root", str(data)],
                             cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):                            # until the first run holds the folder
            if lock_holder(out).get("pid") == first.pid or first.poll() is not None:
                break
            time.sleep(0.05)
        assert lock_holder(out).get("pid") == first.pid
        assert demo.main(SMALL + ["--out", str(out), "--data-root", str(data)]) == 2
        assert first.poll() is None                     # refused while the first still runs, not after an epoch
        err = capsys.readouterr().err
        assert f"{out} is in use by another run, process {first.pid}" in err
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert stdout.strip().splitlines()[-2] == lone      # the numbers of a lone run


# ------------------------------------------------------------------ temporaries
def test_the_clean_up_removes_only_temporaries_whose_writer_is_gone(tmp_path):
    """A second run's start once removed a live run's .tmp-net-train-*.pdf and killed it."""
    live = tmp_path / f".tmp-net-train.pid{os.getpid()}-abc.pdf"
    dead = tmp_path / f".tmp-net-epoch-3.pid{_dead_pid()}-xyz.pt"
    unnamed = tmp_path / ".tmp-net-epoch-2-old.pt"               # no writer named: left alone
    for p in (live, dead, unnamed):
        p.write_bytes(b"partial")
    assert ckpt.remove_stale_temporaries(tmp_path) == [dead]
    assert live.exists() and unnamed.exists() and not dead.exists()


def test_temporaries_name_their_writer(tmp_path):
    seen = []
    atomic.atomic_write(tmp_path / "net-train.pdf", lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"x"))
    assert atomic.writer_pid(seen[0]) == os.getpid() and seen[0].startswith(".tmp-net-train")


def test_a_killed_toy_generation_leaves_nothing_behind(tmp_path):
    dead = tmp_path / f".toy.toy.pid{_dead_pid()}-abc"
    live = tmp_path / f".toy.toy.pid{os.getpid()}-def"
    for d in (dead, live):
        (d / "neg").mkdir(parents=True)
    generate_toy_dataset(tmp_path / "toy", ToyOptions(categories=("toy01",), n_pos=2, n_neg=2), progress=False)
    assert not dead.exists() and live.exists()


# ------------------------------------------------------------------ disk full
def test_a_full_disk_during_a_checkpoint_write_is_said_as_disk_full(tmp_path, monkeypatch, capsys):
    """torch.save reports a short write as RuntimeError 'unexpected pos'; the user reads 'disk full'."""
    def short_write(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                           "file data/3: file write failed; unexpected pos 1024 vs 512")
    monkeypatch.setattr(os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=0, f_frsize=4096))
    target = tmp_path / "net-epoch-3.pt"
    with pytest.raises(OSError) as info:
        atomic.atomic_write(target, short_write, overwrite=False)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []                          # no temporary left

    def body():
        atomic.atomic_write(target, short_write, overwrite=False)
    assert run_cli("reproduce.train", body) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"reproduce.train: disk full: {target}") and "unexpected pos" not in err
