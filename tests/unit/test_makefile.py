"""The root Makefile: every target dry-runs (`make -n TARGET`) without an error or a warning.

A recipe pasted into another rule's text once broke `make image` ("No rule to make target
'docker'") and made every `make` call print "overriding recipe" warnings; this catches both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def rule_targets(text: str) -> list[str]:
    """The explicit targets the Makefile defines (rule lines, not variable assignments)."""
    targets: list[str] = []
    for line in text.splitlines():
        if not line or line[0] in " \t#":
            continue
        m = re.match(r"^([^:=#\s][^:=#]*?)\s*::?(?!=)(.*)$", line)
        if not m or re.match(r"^\s*=", m.group(2)):
            continue
        for target in m.group(1).split():
            if not target.startswith(".") and target not in targets:
                targets.append(target)
    return targets


def phony_targets(text: str) -> list[str]:
    names: list[str] = []
    for m in re.finditer(r"^\.PHONY\s*:(.*)$", text, re.MULTILINE):
        names.extend(m.group(1).split())
    return names


def make_env() -> dict[str, str]:
    # Run as a user would, also when pytest itself runs under `make test`.
    return {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES"}}


def dry_run(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=ROOT,
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


TEXT = MAKEFILE.read_text()
TARGETS = [t for t in rule_targets(TEXT) if "$" not in t]


def test_targets_are_found_and_declared() -> None:
    assert {"help", "venv", "image", "image-broker", "engine", "test", "run"} <= set(TARGETS)
    phony = set(phony_targets(TEXT))
    undeclared = [t for t in TARGETS if t not in phony]
    assert not undeclared, f"targets that are not files must be .PHONY: {undeclared}"
    missing = [t for t in phony if t not in TARGETS]
    assert not missing, f".PHONY names without a rule: {missing}"


def test_each_target_is_defined_once() -> None:
    names = [
        target
        for line in TEXT.splitlines()
        if (m := re.match(r"^([A-Za-z0-9_.$()/-]+(?:\s+[A-Za-z0-9_.$()/-]+)*)\s*:(?!=)", line))
        for target in m.group(1).split()
        if not target.startswith(".")
    ]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"targets with more than one rule: {duplicates}"


@pytest.mark.parametrize("target", TARGETS)
def test_dry_run_has_no_error_or_warning(target: str) -> None:
    result = dry_run(target)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make -n {target} failed:\n{output}"
    warnings = [line for line in output.splitlines() if re.search(r"\bwarning\b", line, re.IGNORECASE)]
    assert not warnings, f"make -n {target} warns:\n" + "\n".join(warnings)


def test_image_recipe_builds_both_targets_with_the_build_script() -> None:
    out = dry_run("image").stdout
    assert "tools/image/build.sh" in out
    assert "fleet-external-server:" in out and "fleet-external-server-operator:" in out
    assert "PYTHON_IMAGE='python:3.11-slim-bookworm'" in out


def test_venv_stamp_depends_on_what_the_editable_install_builds() -> None:
    m = re.search(r"^\$\(VENV\)/\.installed\s*:(.*)$", TEXT, re.MULTILINE)
    assert m, "the venv stamp rule exists"
    prerequisites = m.group(1).split()
    for path in ("pyproject.toml", "setup.py", "server/external_server/native/wait_loop.c"):
        assert path in prerequisites, f"$(VENV)/.installed is rebuilt when {path} changes"
        assert (ROOT / path).is_file()
