"""The installed ``visgen`` command: each subcommand's help and a real run from another folder."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from visgen.cli.main import main


def visgen(*args, cwd):
    """The console script where pip installed it, else ``python -m visgen`` (the same entry point)."""
    exe = shutil.which("visgen")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "visgen", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["train", "sample", "fid", "recon", "bpd", "fvd", "dynamics"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: visgen {command}" in capsys.readouterr().out


def test_usage_and_unknown_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in ("train", "sample", "fid", "recon"))
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_sample_and_fid_run_from_any_folder(tmp_path):
    r = visgen("sample", "--num-images", "4", "--npz", "--out", "s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    npz = next((tmp_path / "s").glob("*/samples.npz"))
    data = str(REPO / "tests" / "data" / "cifar10" / "train")
    r = visgen("fid", "--input", str(npz), "--ref", data, "--no-kid", "--no-cache", "--report", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["fd_cifar10cls"] > 0
    r = visgen("recon", str(REPO / "visgen" / "assets" / "cifar10-vq"), "--data", data, "--name", "t", "--results-dir",
               "res", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "res" / "t.json").read_text())["metrics"]["psnr"] > 20
