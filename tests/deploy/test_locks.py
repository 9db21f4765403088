"""The lock files are an install path of their own: every requirement pinned with == and hashed, every
dependency (the extras a dependency asks for included) inside the file, so that `pip install --require-hashes
-r requirements/<x>.lock` works even with Python 3.11's bundled pip (23.2), which refuses a dependency's
`uvicorn[standard]` when the file pins a bare `uvicorn`. The closure is checked offline against the installed
packages' metadata; the real install is a `pip install --dry-run` with python3.11's own pip (needs PyPI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.deploy import DEPLOY, ROOT, run

LOCKS = ROOT / "requirements"
LOCK_FILES = ("serve.lock", "dev.lock", "build.lock")
# The platform the locks are installed on (image and CI): CPython 3.11 on x86-64 Linux.
TARGET = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<extras>[^\]]*)\])?==(?P<version>[^\s;\\]+)(?P<rest>.*)$")


def entries(lock: str) -> dict[str, tuple[str, set[str], int]]:
    """name -> (version, extras, hashes) of every requirement of a lock file (its continuation lines joined);
    a line that is not `name[extras]==version` fails here."""
    text = re.sub(r"\\\n\s*", " ", (LOCKS / lock).read_text())
    out: dict[str, tuple[str, set[str], int]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"{lock}: not pinned with ==: {line[:120]}"
        if not applies(m["rest"]):
            continue
        extras = {e.strip() for e in (m["extras"] or "").split(",") if e.strip()}
        out[canonicalize_name(m["name"])] = (m["version"], extras, line.count("--hash=sha256:"))
    return out


def applies(rest: str) -> bool:
    """Whether the line's environment marker (if any) holds on the target platform."""
    marker = rest.split("--hash")[0].strip()
    if not marker.startswith(";"):
        return True
    return Requirement("x " + marker).marker.evaluate(TARGET)  # type: ignore[union-attr]


def missing_from(lock: str) -> tuple[list[str], int]:
    """What the locked packages need on the target and the file lacks (a package, or an extra of one),
    from the installed metadata of each locked version; and how many packages could be checked."""
    locked = entries(lock)
    wanted: dict[str, set[str]] = {name: set(extras) for name, (_, extras, _) in locked.items()}
    problems, checked = [], 0
    for name, (version, _, _) in locked.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (a CUDA wheel on a CPU machine): nothing to read
        if canonicalize_name(dist.metadata["Name"]) != name or dist.version.split("+")[0] != version:
            continue
        checked += 1
        for raw in dist.requires or []:
            req = Requirement(raw)
            envs = [{**TARGET, "extra": e} for e in (wanted[name] or {""})]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            dep = canonicalize_name(req.name)
            if dep not in locked:
                problems.append(f"{name} needs {raw}: not in {lock}")
            elif not set(req.extras) <= locked[dep][1]:
                problems.append(f"{name} needs {req.name}[{','.join(sorted(req.extras))}]: {lock} pins {dep} without")
    return problems, checked


@pytest.mark.parametrize("lock", LOCK_FILES)
def test_every_requirement_is_pinned_and_hashed(lock: str) -> None:
    locked = entries(lock)
    assert locked
    unhashed = sorted(name for name, (_, _, hashes) in locked.items() if hashes == 0)
    assert not unhashed, f"{lock}: no --hash for {unhashed}"


@pytest.mark.parametrize("lock", ["serve.lock", "dev.lock"])
def test_every_dependency_and_extra_resolves_within_the_lock(lock: str) -> None:
    problems, checked = missing_from(lock)
    assert not problems, "\n".join(problems)
    assert checked >= 0.8 * len(entries(lock)), f"only {checked} of {lock}'s packages are installed to check"


def test_the_build_backend_is_locked_with_the_version_ci_builds_with() -> None:
    """`pip install .` in the image builds with the locked setuptools, the one dev.lock pins as well."""
    assert entries("build.lock")["setuptools"][0] == entries("dev.lock")["setuptools"][0]


def test_make_lock_hashes_and_keeps_extras_in_every_file() -> None:
    res = run("make", "-n", "-B", "--no-print-directory", "lock")
    assert res.returncode == 0, res.stderr
    compiles = [ln for ln in res.stdout.splitlines() if "uv pip compile" in ln]
    outputs = {re.search(r"-o (\S+)", ln).group(1) for ln in compiles}  # type: ignore[union-attr]
    assert outputs == {f"requirements/{f}" for f in LOCK_FILES}
    for line in compiles:
        assert "--generate-hashes" in line and "--no-strip-extras" in line, line


def derived_constraints(tmp_path: Path) -> Path:
    """The Makefile's own rule turns dev.lock into bare pins (pip takes no hashes nor extras in -c)."""
    out = tmp_path / "constraints.txt"
    res = run("make", "-s", "--no-print-directory", f"CONSTRAINTS={out}", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_constraints_derived_from_the_lock_keep_every_pin_and_nothing_else(tmp_path: Path) -> None:
    lines = derived_constraints(tmp_path).read_text().splitlines()
    pins = {canonicalize_name(ln.split("==")[0]): ln.split("==")[1].split(" ")[0] for ln in lines}
    dev = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", (LOCKS / "dev.lock").read_text(), re.M)
    assert pins == {canonicalize_name(n): v for n, v in dev}
    assert not [ln for ln in lines if "[" in ln or "--hash" in ln or ln.endswith("\\")]
    assert "cuda-toolkit==13.0.3.0 ; sys_platform == 'linux'" in lines
    # The torch image derives them with the very same command.
    sed = re.search(r"^\t(sed -nE '[^']+')", (ROOT / "Makefile").read_text(), re.M).group(1)  # type: ignore[union-attr]
    assert sed in (DEPLOY / "torch.Dockerfile").read_text()


@pytest.fixture(scope="module")
def pip_23(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway venv with the pip that python3.11 bundles (23.2 here), as a user's fresh venv has."""
    python = shutil.which("python3.11")
    if python is None:
        pytest.skip("python3.11 is not installed")
    venv = tmp_path_factory.mktemp("pip23") / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv / "bin" / "pip"


def dry_run(pip: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(pip), "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0 and re.search(r"NewConnectionError|Temporary failure in name resolution", res.stderr):
        pytest.skip("PyPI is not reachable")
    return res


@pytest.mark.parametrize("lock", ["serve.lock", "build.lock"])
def test_bundled_pip_installs_the_lock_with_require_hashes(pip_23: Path, lock: str) -> None:
    """dev.lock is left to the offline checks: hash checking downloads whole wheels (torch's CUDA ones)."""
    res = dry_run(pip_23, "--require-hashes", "-r", str(LOCKS / lock))
    assert res.returncode == 0, res.stderr[-3000:]
    would = re.search(r"^Would install (.*)$", res.stdout, re.M).group(1).split()  # type: ignore[union-attr]
    assert {canonicalize_name(w.rsplit("-", 1)[0]) for w in would} == set(entries(lock))


def test_bundled_pip_takes_the_derived_constraints(pip_23: Path, tmp_path: Path) -> None:
    res = dry_run(pip_23, "-c", str(derived_constraints(tmp_path)), "uvicorn[standard]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "uvicorn-" + entries("dev.lock")["uvicorn"][0] in res.stdout
