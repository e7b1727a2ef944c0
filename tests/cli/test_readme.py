"""The README's first command, run as written: set up, pull the default model into an empty
store, start a server for the session, answer, and stop it again."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from tests.server.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def first_command() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None
    line = block.group(1).splitlines()[0].split("#", 1)[0].strip()
    return shlex.split(line)


def test_readme_first_command_works_as_written(tmp_path: Path) -> None:
    cmd = first_command()
    assert cmd[0] == "scripts/run" and len(cmd) == 2
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    env.update(HERON_MODELS=str(tmp_path / "models"), HERON_HOST=f"127.0.0.1:{port}")
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    answer = done.stdout.strip()
    assert len(answer.split()) >= 5, done.stdout
    assert re.search(r"TCP|UDP", answer)
    assert (tmp_path / "models" / "manifests").is_dir()  # pulled into the empty store
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))  # the session's server is gone
