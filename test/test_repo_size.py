"""The repository travels: its tracked files stay within 40 MiB in all (the GPU machine receives at most
64 MiB), and each shipped model is stored once, as its packed checkpoint ``models/NAME.pt``; the model
folder ``models/NAME/`` (``model.onnx``, ``model.json``, ``weights.pt``) is derived, never tracked.
"""

import fnmatch
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUDGET = 40 * 2**20  # bytes
DERIVED = ("*.onnx", "models/*/model.*", "models/*/weights.pt", "*.plan")


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (no git or no .git): nothing is tracked")
    out = subprocess.run([git, "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    return [p for p in out.decode().split("\0") if p]


def test_tracked_files_fit_the_budget(tracked: list[str]) -> None:
    """``git ls-files | xargs du -cb``: the sizes of the tracked files as they are in the working tree."""
    sizes = {p: (REPO / p).lstat().st_size for p in tracked if (REPO / p).is_file() or (REPO / p).is_symlink()}
    total = sum(sizes.values())
    biggest = ", ".join(f"{p} {s / 2**20:.1f} MiB" for p, s in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
    assert total <= BUDGET, f"tracked files are {total / 2**20:.1f} MiB, over {BUDGET / 2**20:.0f} MiB ({biggest})"


def test_no_derived_model_file_is_tracked(tracked: list[str]) -> None:
    derived = [p for p in tracked if any(fnmatch.fnmatch(p, pattern) for pattern in DERIVED)]
    assert not derived, f"derived model files are tracked (derive them from models/NAME.pt instead): {derived}"


def test_the_default_model_is_stored_once_as_its_checkpoint(tracked: list[str]) -> None:
    assert "models/dualdepth_default.pt" in tracked
    assert not [p for p in tracked if p.startswith("models/dualdepth_default/")]


def test_derived_model_files_are_ignored() -> None:
    """A derived folder never shows up as untracked work to commit."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (no git or no .git)")
    paths = [
        "models/dualdepth_default/model.onnx",
        "models/dualdepth_default/model.json",
        "models/dualdepth_default/weights.pt",
        "models/other/model.0123abcd.plan",
        "models/.dualdepth_default.lock",
    ]
    proc = subprocess.run([git, "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.split() == paths
    kept = subprocess.run(
        [git, "check-ignore", "--no-index", "models/dualdepth_default.pt", "models/MODEL_CARD.md"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert kept.stdout == ""  # the checkpoint and the card are not ignored
