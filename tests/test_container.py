"""The container image and the compose example, checked as text (CI cannot build images here:
scripts/test lints the Dockerfile with hadolint, and these tests check what the image promises).

Each check returns the problems it finds, so that the tests below can also show that a broken
Dockerfile or compose file is caught."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"


# --- Dockerfile ---------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    if pending:
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, a FROM first."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """ENV key=value pairs of a stage (the `ENV key value` form too)."""
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword != "ENV":
            continue
        if "=" not in args.split(" ", 1)[0]:
            key, _, value = args.partition(" ")
            env[key] = value.strip()
            continue
        for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', args):
            env[key] = value.strip('"')
    return env


def exec_form(args: str) -> list[str] | None:
    """A JSON-array (exec form) argument list, or None for the shell form."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def dockerfile_problems(text: str) -> list[str]:
    problems: list[str] = []
    all_stages = stages(text)
    if len(all_stages) < 2:
        problems.append("not a multi-stage build")
    if not all_stages:
        return problems + ["no FROM"]
    final = all_stages[-1]
    base = final[0][1].split()[0]
    if not re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base):
        problems.append(f"final stage is not a slim Python image: {base}")
    if re.search(r"-march=native|-mcpu=native|-mtune=native", text):
        problems.append("a -march/-mcpu/-mtune=native flag ties the image to the build host")

    users = [args for keyword, args in final if keyword == "USER"]
    if not users:
        problems.append("the final stage runs as root (no USER)")
    else:
        user, _, group = users[-1].partition(":")
        if user in ("root", "0") or group in ("root", "0"):
            problems.append(f"the final stage runs as root (USER {users[-1]})")

    checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    if not checks or checks[-1].upper() == "NONE":
        problems.append("no HEALTHCHECK in the final stage")
    elif "/health" not in checks[-1] or "CMD" not in checks[-1]:
        problems.append(f"the HEALTHCHECK does not ask /health: {checks[-1]}")

    env = env_of(final)
    store = env.get("HERON_MODELS")
    if store != "/data/models":
        problems.append(f"HERON_MODELS is {store!r}, not /data/models")
    volumes: list[str] = []
    for keyword, args in final:
        if keyword == "VOLUME":
            volumes += exec_form(args) or args.split()
    if store not in volumes:
        problems.append(f"the model store {store} is not a VOLUME (volumes: {volumes})")
    if env.get("HERON_HOST") != "0.0.0.0:11434":
        problems.append(f"HERON_HOST is {env.get('HERON_HOST')!r}, not 0.0.0.0:11434")
    exposed = [p for keyword, args in final if keyword == "EXPOSE" for p in args.split()]
    if "11434" not in exposed and "11434/tcp" not in exposed:
        problems.append("port 11434 is not exposed")

    entry = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    if not entry or "HERON_API_KEY" not in entry[-1]:
        problems.append("the ENTRYPOINT does not check HERON_API_KEY")
    # The kernels are compiled in the builder through the normal install.
    if not any(k == "RUN" and re.search(r"pip install\b.*\s\.(\s|$)", a) for k, a in all_stages[0]):
        problems.append("the builder stage does not `pip install .`")
    if not any(k == "COPY" and "--from=" in a and "/opt/venv" in a for k, a in final):
        problems.append("the runtime stage does not copy the builder's venv")
    return problems


def entrypoint(text: str) -> list[str]:
    final = stages(text)[-1]
    args = [a for k, a in final if k == "ENTRYPOINT"][-1]
    command = exec_form(args)
    assert command is not None, "the ENTRYPOINT is in exec form"
    return command


def test_dockerfile_keeps_its_promises() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("USER 10001:10001", "USER root", "runs as root"),
        ("USER 10001:10001", "", "runs as root"),
        ("/health", "/ready", "does not ask /health"),
        ('VOLUME ["/data/models"]', "", "is not a VOLUME"),
        ("RUN pip install --no-build-isolation", "RUN CFLAGS=-march=native pip install", "native"),
        ("HERON_HOST=0.0.0.0:11434", "HERON_HOST=127.0.0.1", "HERON_HOST"),
        (
            "FROM python:3.11-slim-bookworm AS runtime",
            "FROM python:3.11-bookworm AS runtime",
            "slim",
        ),
        ("EXPOSE 11434", "EXPOSE 8080", "not exposed"),
    ],
)
def test_dockerfile_checks_catch_a_broken_image(old: str, new: str, problem: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert any(problem in p for p in problems), problems


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
def test_entrypoint_refuses_to_start_without_an_api_key(tmp_path: Path) -> None:
    # A stand-in `heron` shows what the entrypoint would run.
    fake = tmp_path / "heron"
    fake.write_text('#!/bin/sh\necho "heron $*"\n')
    fake.chmod(0o755)
    command = entrypoint(DOCKERFILE.read_text())
    base = {
        "PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HERON_HOST": "0.0.0.0:11434",
    }

    refused = subprocess.run([*command, "serve"], env=base, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "HERON_API_KEY is not set" in refused.stderr
    assert refused.stdout == ""  # heron never ran

    empty = subprocess.run(
        [*command, "serve"], env={**base, "HERON_API_KEY": ""}, capture_output=True, text=True
    )
    assert empty.returncode != 0

    ran = subprocess.run(
        [*command, "serve", "smollm2"],
        env={**base, "HERON_API_KEY": "secret"},
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "heron serve smollm2"


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3")
def test_healthcheck_command_is_valid_python() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    check = [a for k, a in final if k == "HEALTHCHECK"][-1]
    command = exec_form(check[check.index("CMD") + 3 :].strip())
    assert command is not None and command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")  # a syntax error would mark it unhealthy forever


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # A local venv or built kernels copied in would replace what the image compiles.
    assert {".git", ".venv", "build", "**/*.so", ".env"} <= ignored


# --- compose.yaml -------------------------------------------------------------------------------


def load_compose(text: str) -> dict[str, Any]:
    import yaml  # PyYAML: huggingface_hub, a dependency of Heron, requires it

    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def compose_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    services = data.get("services") or {}
    heron = services.get("heron")
    if not heron:
        return ["no heron service"]
    ports = heron.get("ports") or []
    if not ports:
        problems.append("heron publishes no port")
    for port in ports:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        if host_ip != "127.0.0.1":
            problems.append(f"heron's port {port} is not bound to 127.0.0.1")

    env = heron.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    key = str(env.get("HERON_API_KEY") or "")
    if not key.startswith("${HERON_API_KEY"):
        problems.append("heron does not take HERON_API_KEY from the environment")

    volumes = heron.get("volumes") or []
    named = set(data.get("volumes") or {})
    if not any(str(v).split(":")[0] in named and ":/data/models" in str(v) for v in volumes):
        problems.append("the model store is not on a named volume")

    webui = services.get("open-webui")
    if not webui:
        problems.append("no open-webui service")
    else:
        wenv = webui.get("environment") or {}
        base = str(wenv.get("OPENAI_API_BASE_URL") or wenv.get("OLLAMA_BASE_URL") or "")
        if not base.startswith("http://heron:11434"):
            problems.append(f"Open WebUI is not pointed at Heron: {base!r}")
        if "OPENAI_API_BASE_URL" in wenv and not str(wenv.get("OPENAI_API_KEY", "")).startswith(
            "${HERON_API_KEY"
        ):
            problems.append("Open WebUI does not pass Heron's API key")
        for port in webui.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"Open WebUI's port {port} is not bound to 127.0.0.1")
    return problems


def test_compose_binds_heron_to_loopback_with_a_key() -> None:
    assert compose_problems(load_compose(COMPOSE.read_text())) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('"127.0.0.1:11434:11434"', '"11434:11434"', "not bound to 127.0.0.1"),
        ('"127.0.0.1:11434:11434"', '"0.0.0.0:11434:11434"', "not bound to 127.0.0.1"),
        (
            "HERON_API_KEY: ${HERON_API_KEY",
            "HERON_API_KEY_UNUSED: ${HERON_API_KEY",
            "HERON_API_KEY",
        ),
        ("heron-models:/data/models", "./models:/data/models", "named volume"),
        ("http://heron:11434/v1", "http://localhost:11434/v1", "not pointed at Heron"),
    ],
)
def test_compose_checks_catch_a_broken_file(old: str, new: str, problem: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    problems = compose_problems(load_compose(text.replace(old, new)))
    assert any(problem in p for p in problems), problems
