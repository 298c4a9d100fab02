"""The Dockerfile, checked without a container engine.

- statically: every path it COPYs exists and is in the build context (.dockerignore), the stages
  and their order, the fixed module directory, the non-root user, entrypoints, ports and the
  config path agree with the operator, the chart and pyproject.toml;
- the build-only parts: extra CAs reach the build stages and never the images, the images install
  offline from a wheelhouse pinned by tools/image/constraints.txt, tools/image/build.sh (what
  `make image` runs) and tools/image/ensure-base.sh driven by a stand-in `docker`, and the runc
  wrapper tools/docker/engine.sh installs;
- by emulation: tools/image_emulation.sh repeats its build steps (compile every module with the
  same script, build the wheel from the copied files, install it into fresh venvs, run
  `external-server --help` / `external-server-operator --help`, start the server on the built
  modules), and every module path the chart, the examples and the e2e suite reference is one
  the image contains.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from external_server_operator import main as operator_main
from external_server_operator import render, settings
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MODULES_DIR = "/opt/external-server/modules/"
#: Where module paths are referenced that must exist in the server image.
REFERENCING = ("charts", "e2e", "tests/cluster", "tests/chart", "config")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) from a Dockerfile; continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            stages.append(Stage(name=m.group(2), base=m.group(1)))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}


def stage_args(stage: Stage) -> dict[str, str]:
    values = dict(ARGS)
    for a in stage.all("ARG"):
        name, _, default = a.partition("=")
        values[name.strip()] = default.strip()
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def copies(stage: Stage) -> list[tuple[str | None, list[str], str]]:
    """(from stage or None for the build context, sources, destination) of each COPY."""
    out = []
    for c in stage.all("COPY"):
        words = shlex.split(substitute(c, stage_args(stage)))
        source_stage = None
        while words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--from="):
                source_stage = flag.removeprefix("--from=")
        *sources, dest = words
        out.append((source_stage, sources, dest))
    return out


def exec_form(value: str) -> list[str]:
    parsed = yaml.safe_load(value)
    assert isinstance(parsed, list), f"exec form expected: {value}"
    return [str(v) for v in parsed]


def dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled by this test"
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append(re.compile(regex.rstrip("/")))
    return patterns


def ignored(path: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether the build context lacks ``path`` (it or one of its parents matches)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def tracked_files(path: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True, check=False
    )
    files = out.stdout.split() if out.returncode == 0 else []
    if not files:  # not a git checkout (or untracked yet): the files on disk
        base = ROOT / path
        files = (
            [str(p.relative_to(ROOT)) for p in base.rglob("*") if p.is_file()] if base.is_dir() else [path]
        )
    return files


# --- static checks -----------------------------------------------------------------------------------


def test_stages_and_default_target() -> None:
    assert [s.name for s in STAGES] == ["modules", "wheel", "runtime", "operator", "server"]
    assert STAGES[-1].name == "server", "a plain `docker build .` builds the server image"
    assert ARGS["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert BY_NAME["operator"].base == BY_NAME["server"].base == "runtime"


def test_every_copied_path_exists_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    names = [s.name for s in STAGES]
    for index, stage in enumerate(STAGES):
        for source_stage, sources, _ in copies(stage):
            if source_stage is not None:
                assert source_stage in names[:index], (
                    f"{stage.name}: COPY --from={source_stage} (no such stage)"
                )
                continue
            for src in sources:
                assert (ROOT / src).exists(), f"{stage.name}: COPY {src}: missing"
                assert not ignored(src, patterns), f"{stage.name}: COPY {src}: excluded by .dockerignore"
                for f in tracked_files(src):
                    assert not ignored(f, patterns), f"{f} (under COPY {src}) is excluded by .dockerignore"


def test_modules_stage_builds_everything_with_the_shared_script() -> None:
    stage = BY_NAME["modules"]
    runs = " ".join(stage.all("RUN"))
    assert "tools/image/build-modules.sh /out/modules /tmp/extra-modules" in runs
    for pkg in ("libcurl4-openssl-dev", "libjansson-dev", "make", "gcc"):
        assert pkg in runs, f"the modules stage installs {pkg}"
    copied = {src for _, sources, _ in copies(stage) for src in sources}
    assert {"lib/", "tools/image/build-modules.sh"} <= copied
    extra = stage_args(stage)["EXTRA_MODULES_DIR"]
    assert extra == "tools/image/extra-modules" and (ROOT / extra / "README.md").is_file()


def test_server_image_layout() -> None:
    stage = BY_NAME["server"]
    (module_copy,) = [c for c in copies(stage) if c[0] == "modules"]
    assert module_copy == ("modules", ["/out/modules/"], MODULES_DIR)
    assert f"MODULES_DIR={MODULES_DIR.rstrip('/')}" in stage.all("ENV")
    assert exec_form(stage.all("ENTRYPOINT")[-1]) == ["external-server"]
    assert exec_form(stage.all("CMD")[-1]) == ["-c", render.CONFIG_PATH]
    assert stage.all("EXPOSE") == [str(settings.HTTP_PORT)]
    assert stage.all("USER") == [f"{render.RUN_AS_USER}:{render.RUN_AS_USER}"]
    runs = " ".join(stage.all("RUN"))
    assert "[operator]" not in runs, "the server image stays free of kopf"
    for lib in ("libcurl4", "libjansson4"):
        assert lib in runs, f"the fleet_http modules need {lib} at run time"


def test_operator_image_layout() -> None:
    stage = BY_NAME["operator"]
    assert exec_form(stage.all("ENTRYPOINT")[-1]) == ["external-server-operator"]
    assert stage.all("EXPOSE") == [str(operator_main.DEFAULT_LIVENESS_PORT)]
    assert stage.all("USER") == [f"{render.RUN_AS_USER}:{render.RUN_AS_USER}"]
    assert "[operator]" in " ".join(stage.all("RUN"))
    assert not [c for c in copies(stage) if c[0] == "modules"], "no modules in the operator image"


def test_runtime_user_and_versions_agree() -> None:
    runtime = BY_NAME["runtime"]
    runs = " ".join(runtime.all("RUN"))
    uid = render.RUN_AS_USER
    assert f"--uid {uid}" in runs and f"--gid {uid}" in runs
    assert "PYTHONDONTWRITEBYTECODE=1" in " ".join(runtime.all("ENV"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = pyproject["project"]["version"]
    assert stage_args(runtime)["VERSION"] == version
    chart = yaml.safe_load((ROOT / "charts" / "external-server" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert f"fleet-external-server:{version}" == settings.DEFAULT_IMAGE
    scripts = pyproject["project"]["scripts"]
    assert {"external-server", "external-server-operator"} <= set(scripts)


# --- extra CAs and the pinned wheelhouse -----------------------------------------------------------

BUILD_STAGES = ("modules", "wheel")
IMAGE_STAGES = ("runtime", "operator", "server")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def test_extra_cas_are_trusted_by_the_build_stages_before_any_download() -> None:
    for name in BUILD_STAGES:
        stage = BY_NAME[name]
        assert stage_args(stage)["EXTRA_CA_DIR"] == "tools/image/extra-ca"
        assert (None, ["tools/image/extra-ca/"], "/tmp/extra-ca/") in copies(stage)
        runs = stage.all("RUN")
        assert runs[0] == "trust-extra-ca /tmp/extra-ca", f"{name}: the CAs come first"
        env = " ".join(stage.all("ENV"))
        for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            assert f"{var}={CA_BUNDLE}" in env, f"{name}: {var} points at the combined bundle"
        keywords = [kw for kw, _ in stage.instructions]
        first_download = min(
            i
            for i, (kw, args) in enumerate(stage.instructions)
            if kw == "RUN" and re.search(r"apt-get|pip", args)
        )
        assert keywords.index("ENV") < first_download


def test_the_images_never_see_the_extra_cas() -> None:
    for name in IMAGE_STAGES:
        stage = BY_NAME[name]
        assert "EXTRA_CA_DIR" not in stage_args(stage)
        assert not [c for c in copies(stage) if c[0] is None], (
            f"{name}: copies nothing from the build context"
        )
        text = " ".join(args for _, args in stage.instructions)
        assert "extra-ca" not in text and "PIP_CERT" not in text
    assert BY_NAME["runtime"].base == "${PYTHON_IMAGE}"
    # The default directory ships no certificate (git ignores what a builder drops there).
    assert [Path(f).name for f in tracked_files("tools/image/extra-ca")] == ["README.md"]


def test_images_install_offline_from_the_pinned_wheelhouse() -> None:
    wheel = BY_NAME["wheel"]
    runs = wheel.all("RUN")
    assert "python -m pip wheel --wheel-dir /wheels --requirement tools/image/constraints.txt" in runs
    assert "python -m pip wheel --no-deps --wheel-dir /wheels ." in runs
    sources = [src for _, srcs, _ in copies(wheel) for src in srcs]
    assert sources.index("tools/image/constraints.txt") < sources.index("server/"), (
        "the dependency layer is cached across source changes"
    )
    for name in ("operator", "server"):
        install = " ".join(r for r in BY_NAME[name].all("RUN") if "pip install" in r)
        assert "--no-index" in install and "--find-links /tmp/wheels" in install, name


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in (ROOT / "tools" / "image" / "constraints.txt").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
        assert m, f"constraints.txt: not a name==version pin: {line}"
        out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_constraints_pin_every_dependency_of_both_images() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    needed = [*project["dependencies"], *project["optional-dependencies"]["operator"]]
    for spec in needed:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not pinned: run tools/image/gen-constraints.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{requirement.name}=={pinned[name]} does not satisfy {spec}: run tools/image/gen-constraints.sh"
        )
    assert "fleet-external-server" not in pinned


# --- tools/image/build.sh and ensure-base.sh with a stand-in docker ------------------------------

FAKE_DOCKER = """#!/bin/sh
# A stand-in docker: records each call; `image inspect` succeeds for the names in $FAKE_PRESENT.
echo "$*" >>"$FAKE_LOG"
case "$1" in
  info) [ "${FAKE_DAEMON:-1}" = 1 ] ;;
  image)  # image inspect [-f FORMAT] NAME: labels from $FAKE_LABELS (name=value ...)
    if [ "$3" = -f ]; then format=$4; name=$5; else format=""; name=$3; fi
    for n in $FAKE_PRESENT; do
      [ "$n" = "$name" ] || continue
      case "$format" in
        *Labels*) for kv in $FAKE_LABELS; do [ "${kv%%=*}" = "$name" ] && echo "${kv#*=}"; done ;;
        *Id*) echo sha256:fake ;;
      esac
      exit 0
    done
    exit 1 ;;
  pull) echo "Error response from daemon: no registry here" >&2; exit 1 ;;
  build) exit 0 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "docker.log"),
        "FAKE_PRESENT": "python:3.11-slim-bookworm",
        "FLEET_CACHE_DIR": str(tmp_path / "cache"),
        "FAKE_LABELS": "",
        "EXTRA_CA": "",
        "PYTHON_IMAGE": "",
    }


def run_script(path: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / path), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def docker_calls(env: dict[str, str], verb: str) -> list[str]:
    log = Path(env["FAKE_LOG"])
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split(" ", 1)[0] == verb]


def build_arg(call: str, name: str) -> str:
    words = call.split()
    values = [words[i + 1].partition("=")[2] for i, w in enumerate(words[:-1]) if w == "--build-arg"]
    names = [words[i + 1].partition("=")[0] for i, w in enumerate(words[:-1]) if w == "--build-arg"]
    return values[names.index(name)]


def test_build_script_builds_both_targets_and_prints_the_tags(fake_docker: dict[str, str]) -> None:
    result = run_script("tools/image/build.sh", fake_docker, "srv:t", "op:t")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["srv:t", "op:t"]
    builds = docker_calls(fake_docker, "build")
    assert [c.split("--target ")[1].split()[0] for c in builds] == ["server", "operator"]
    for call in builds:
        assert build_arg(call, "PYTHON_IMAGE") == "python:3.11-slim-bookworm"
        assert build_arg(call, "EXTRA_CA_DIR") == "tools/image/extra-ca"


def test_build_script_stages_extra_ca_by_digest(fake_docker: dict[str, str], tmp_path: Path) -> None:
    pem = f"-----BEGIN CERTIFICATE-----\n{tmp_path.name}\n-----END CERTIFICATE-----\n"
    ca = tmp_path / "proxy.pem"
    ca.write_text(pem)
    staged = ROOT / "tools" / "image" / ".build-ca" / hashlib.sha256(pem.encode()).hexdigest()[:16]
    try:
        for _ in range(2):
            result = run_script("tools/image/build.sh", {**fake_docker, "EXTRA_CA": str(ca)})
            assert result.returncode == 0, result.stderr
        dirs = {build_arg(c, "EXTRA_CA_DIR") for c in docker_calls(fake_docker, "build")}
        assert dirs == {str(staged.relative_to(ROOT))}, "the same CA gives the same build argument"
        assert [p.read_text() for p in staged.iterdir()] == [pem]
    finally:
        for p in staged.glob("*"):
            p.unlink()
        if staged.exists():
            staged.rmdir()

    result = run_script("tools/image/build.sh", {**fake_docker, "EXTRA_CA": str(tmp_path / "missing.pem")})
    assert result.returncode == 1 and "no such file" in result.stderr
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    result = run_script("tools/image/build.sh", {**fake_docker, "EXTRA_CA": str(tmp_path / "empty.pem")})
    assert result.returncode == 1 and "no PEM certificate" in result.stderr


def test_build_script_says_how_to_get_an_engine(fake_docker: dict[str, str]) -> None:
    result = run_script("tools/image/build.sh", {**fake_docker, "FAKE_DAEMON": "0"})
    assert result.returncode == 1
    assert "no Docker daemon answers" in result.stderr and "make engine" in result.stderr
    assert not docker_calls(fake_docker, "build")


def test_ensure_base_prefers_the_public_image_then_the_local_one(fake_docker: dict[str, str]) -> None:
    result = run_script("tools/image/ensure-base.sh", fake_docker, "python")
    assert (result.returncode, result.stdout) == (0, "python:3.11-slim-bookworm\n"), result.stderr
    assert not docker_calls(fake_docker, "pull")

    recipe = run_script("tools/image/ensure-base.sh", fake_docker, "recipe").stdout.strip()
    assert re.fullmatch(r"\d+-[0-9a-f]{12}", recipe), recipe
    labels = f"fleet-local/python:3.11-bookworm={recipe} fleet-local/debian:bookworm={recipe.split('-')[0]}"
    fake_docker["FAKE_LABELS"] = labels
    local = {**fake_docker, "FAKE_PRESENT": "fleet-local/python:3.11-bookworm"}
    result = run_script("tools/image/ensure-base.sh", local, "python")
    assert (result.returncode, result.stdout) == (0, "fleet-local/python:3.11-bookworm\n"), result.stderr
    assert docker_calls(local, "pull") == ["pull -q python:3.11-slim-bookworm"]
    assert "cannot pull python:3.11-slim-bookworm" in result.stderr

    result = run_script("tools/image/ensure-base.sh", {**local, "FLEET_IMAGE_PULL": "0"}, "python")
    assert result.returncode == 0 and len(docker_calls(local, "pull")) == 1

    result = run_script(
        "tools/image/ensure-base.sh", {**fake_docker, "FAKE_PRESENT": "fleet-local/debian:bookworm"}, "debian"
    )
    assert (result.returncode, result.stdout) == (0, "fleet-local/debian:bookworm\n"), result.stderr


# --- the runc wrapper of tools/docker/engine.sh ---------------------------------------------------


def make_wrapper(tmp_path: Path, clamp: str) -> tuple[Path, Path]:
    log = tmp_path / "runc-args"
    real = tmp_path / "real-runc"
    real.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >"{log}"\n')
    real.chmod(0o755)
    template = (ROOT / "tools" / "docker" / "fleet-runc").read_text()
    wrapper = tmp_path / f"fleet-runc-{clamp}"
    wrapper.write_text(template.replace("@REAL_RUNC@", str(real)).replace("@CLAMP@", clamp))
    wrapper.chmod(0o755)
    return wrapper, log


def bundle(tmp_path: Path, name: str, oom: int | None) -> Path:
    path = tmp_path / name
    path.mkdir()
    process: dict[str, object] = {"args": ["true"]}
    if oom is not None:
        process["oomScoreAdj"] = oom
    (path / "config.json").write_text(
        json.dumps({"ociVersion": "1.0.2", "process": process}, separators=(",", ":"))
    )
    return path


def oom_of(config: Path) -> object:
    return json.loads(config.read_text())["process"].get("oomScoreAdj")


def test_runc_wrapper_raises_negative_oom_scores_and_passes_everything_on(tmp_path: Path) -> None:
    wrapper, log = make_wrapper(tmp_path, "1")
    sandbox = bundle(tmp_path, "sandbox", -998)
    args = [
        "--root",
        "/run/x",
        "--log",
        "l.json",
        "create",
        "--bundle",
        str(sandbox),
        "--pid-file",
        "p",
        "id1",
    ]
    subprocess.run([str(wrapper), *args], check=True, timeout=30)
    assert oom_of(sandbox / "config.json") == 0
    assert log.read_text().splitlines() == args

    for value in (500, 0, None):
        kept = bundle(tmp_path, f"kept{value}", value)
        subprocess.run([str(wrapper), "create", f"--bundle={kept}", "id2"], check=True, timeout=30)
        assert oom_of(kept / "config.json") == value

    in_cwd = bundle(tmp_path, "cwd", -1)  # runc's default bundle is the working directory
    subprocess.run([str(wrapper), "run", "id3"], cwd=in_cwd, check=True, timeout=30)
    assert oom_of(in_cwd / "config.json") == 0

    process = tmp_path / "process.json"
    process.write_text('{"args":["sh"],"oomScoreAdj":-500}')
    subprocess.run([str(wrapper), "exec", "--process", str(process), "id1"], check=True, timeout=30)
    assert json.loads(process.read_text())["oomScoreAdj"] == 0


def test_runc_wrapper_changes_nothing_where_negative_scores_work(tmp_path: Path) -> None:
    wrapper, log = make_wrapper(tmp_path, "0")
    sandbox = bundle(tmp_path, "sandbox", -998)
    subprocess.run([str(wrapper), "create", "--bundle", str(sandbox), "id"], check=True, timeout=30)
    assert oom_of(sandbox / "config.json") == -998
    assert log.read_text().splitlines() == ["create", "--bundle", str(sandbox), "id"]


def test_engine_script_usage() -> None:
    result = subprocess.run(
        [str(ROOT / "tools" / "docker" / "engine.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "ensure|stop|status" in result.stderr


# --- build-modules.sh ----------------------------------------------------------------------------


def _build_modules(out: Path, extra: Path, *, only_example: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEET_REQUIRE_REAL_PARTS": os.environ.get("FLEET_REQUIRE_REAL_PARTS", "0")}
    if only_example:  # fleet_http's Makefile then skips itself (as on a machine without its -dev packages)
        env.update(FLEET_REQUIRE_REAL_PARTS="0", PROBE_HEADERS="no-such-header-for-this-test.h")
    return subprocess.run(
        [str(ROOT / "tools" / "image" / "build-modules.sh"), str(out), str(extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_build_modules_adds_extra_modules_and_refuses_collisions(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "libcustom.so").write_bytes(b"\x7fELF not really")
    (extra / "notes.txt").write_text("ignored")
    result = _build_modules(tmp_path / "out", extra, only_example=True)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert "libexample.so" in listed and "libcustom.so" in listed and "notes.txt" not in listed

    (extra / "libexample.so").write_bytes(b"shadowing the built one")
    result = _build_modules(tmp_path / "out2", extra, only_example=True)
    assert result.returncode != 0
    assert "libexample.so collides" in result.stderr

    result = _build_modules(tmp_path / "out", extra, only_example=True)
    assert result.returncode != 0 and "not empty" in result.stderr


# --- emulation ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("image-emulation")
    result = subprocess.run(
        [str(ROOT / "tools" / "image_emulation.sh"), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = "\n".join(line for line in result.stderr.splitlines() if "is ignored: it is neither" not in line)
    assert result.returncode == 0, f"tools/image_emulation.sh failed:\n{log[-6000:]}"
    return work, log


def test_emulated_build_succeeds(emulation: tuple[Path, str]) -> None:
    work, log = emulation
    assert "image-emulation: OK" in log
    help_text = (work / "server-help.txt").read_text()
    assert "--http-port" in help_text and "--tls" in help_text
    assert "--all-namespaces" in (work / "operator-help.txt").read_text()
    assert "libexample.so: module 1000" in log
    assert set((work / "modules.list").read_text().split()) >= {"libexample.so"}


@pytest.fixture(scope="module")
def built_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The file names the image's module directory gets (the modules stage's script)."""
    result = _build_modules(
        tmp_path_factory.mktemp("modules") / "out", ROOT / "tools" / "image" / "extra-modules"
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_referenced_modules_are_in_the_image(built_modules: set[str]) -> None:
    built = built_modules
    referenced: dict[str, set[str]] = {}
    pattern = re.compile(re.escape(MODULES_DIR) + r"([A-Za-z0-9_.+-]+\.so)")
    for top in REFERENCING:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in {
                ".yaml",
                ".yml",
                ".json",
                ".py",
                ".sh",
                ".md",
                ".txt",
                ".tpl",
            }:
                for name in pattern.findall(path.read_text(errors="replace")):
                    referenced.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert "libexample.so" in referenced, "the examples use the example module"
    if "libfleet_http_io.so" not in built and os.environ.get("FLEET_REQUIRE_REAL_PARTS") != "1":
        referenced = {k: v for k, v in referenced.items() if not k.startswith("libfleet_http_")}
    missing = {name: sorted(where) for name, where in referenced.items() if name not in built}
    assert not missing, f"referenced but not built into {MODULES_DIR}: {missing}"
