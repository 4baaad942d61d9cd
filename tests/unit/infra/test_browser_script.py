"""infra/browser.sh decisions, on a PATH of stubs (``id``, ``sudo``, ``apt-get``) that record
their arguments; ``CHROMIUM`` names a file under the test's directory, which the ``apt-get``
stub creates when it "installs". The machine's own browser and packages are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "infra" / "browser.sh"


@dataclass
class Machine:
    """A fake machine: its stubs' directory, the browser path and the calls log."""

    root: Path
    chromium: Path
    calls: Path

    def stub(self, name: str, body: str) -> None:
        path = self.root / "bin" / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{self.calls}"\n{body}\n')
        path.chmod(0o755)

    def run(self) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(self.root / "bin"), "CHROMIUM": str(self.chromium)}
        return subprocess.run(
            ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
        )

    def called(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def _installs(chromium: Path) -> str:
    return (
        f'if [[ $1 == install ]]; then printf "#!/bin/bash\\necho Chromium 1\\n" > "{chromium}"; '
        f'chmod +x "{chromium}"; fi'
    )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    (tmp_path / "bin").mkdir()
    for tool in ("bash", "env", "chmod", "touch"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / "bin" / tool).symlink_to(found)
    made = Machine(tmp_path, tmp_path / "usr-bin" / "chromium", tmp_path / "calls.log")
    made.chromium.parent.mkdir()
    made.stub("id", 'echo "${FAKE_UID:-0}"')
    return made


def test_an_installed_browser_is_left_alone_and_nothing_runs(machine: Machine) -> None:
    machine.chromium.write_text("#!/bin/bash\n")
    machine.chromium.chmod(0o755)
    machine.stub("apt-get", "exit 1")
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert not [call for call in machine.called() if call.startswith("apt-get")]


def test_as_root_a_missing_browser_is_installed_with_apt_get(machine: Machine) -> None:
    machine.stub("apt-get", _installs(machine.chromium))
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.called() == ["id -u", "apt-get install -y chromium"]
    assert "installed: Chromium 1" in result.stderr
    again = machine.run()  # twice: the second run finds it
    assert again.returncode == 0 and machine.called().count("apt-get install -y chromium") == 1


def test_stale_package_lists_are_refreshed_once_and_the_install_retried(
    machine: Machine,
) -> None:
    updated = machine.root / "updated"
    machine.stub(
        "apt-get",
        f'if [[ $1 == update ]]; then touch "{updated}"; exit 0; fi\n'
        f'[[ -e "{updated}" ]] || exit 100\n' + _installs(machine.chromium),
    )
    result = machine.run()
    assert result.returncode == 0, result.stderr
    apt = [call for call in machine.called() if call.startswith("apt-get")]
    assert apt == ["apt-get install -y chromium", "apt-get update", "apt-get install -y chromium"]


def test_without_root_or_passwordless_sudo_it_prints_the_commands_and_fails(
    machine: Machine,
) -> None:
    machine.stub("id", "echo 1000")
    machine.stub("sudo", "exit 1")  # sudo -n true: a password is needed
    machine.stub("apt-get", "exit 0")
    result = machine.run()
    assert result.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y chromium" in result.stderr
    assert "sudo asks for a password" in result.stderr
    assert not [call for call in machine.called() if call.startswith("apt-get")]


def test_passwordless_sudo_installs_it(machine: Machine) -> None:
    machine.stub("id", "echo 1000")
    machine.stub("sudo", 'shift; [[ $1 == true ]] && exit 0; exec "$@"')
    machine.stub("apt-get", _installs(machine.chromium))
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert "apt-get install -y chromium" in machine.called()
    assert "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium" in (
        machine.called()
    )


def test_without_apt_get_it_says_so(machine: Machine) -> None:
    result = machine.run()
    assert result.returncode == 1 and "no apt-get" in result.stderr


def test_the_script_is_shellcheck_clean() -> None:
    beside = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: pip install -e '.[dev]' brings it"
    result = subprocess.run(
        [shellcheck, str(SCRIPT)], capture_output=True, text=True, check=False, env=os.environ
    )
    assert result.returncode == 0, result.stdout + result.stderr
