"""The test command proves the newest versions pyproject.toml admits (`.ci/newest-stack`, run by
README's test command on Python 3.13 or 3.12), and says so plainly when it cannot."""

import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, ".ci", "newest-stack")


def _test_command() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    block = text.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1]
    return block.split("```", 1)[0].strip()


def test_the_test_command_ends_with_the_newest_stack():
    command = _test_command()
    assert command.endswith("&& .ci/newest-stack"), command
    assert "-c constraints.txt" in command.split("&& .ci/newest-stack")[0]
    assert os.access(SCRIPT, os.X_OK)
    assert "constraints" not in open(SCRIPT).read().split('"$py" -m venv', 1)[1]


def test_without_another_python_it_says_it_tested_nothing(tmp_path):
    bin_dir = tmp_path / "bin"  # only the tools the script needs: no python, no pyenv
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "grep", "sort", "tail", "mktemp", "rm"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("newest stack NOT tested: no python3.13 or python3.12 found")
    env["AECORE_NEWEST_PYTHON"] = str(tmp_path / "missing-python")  # a named one must work
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "NOT tested" not in proc.stdout
