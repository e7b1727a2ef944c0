"""The ``heron run`` REPL driven through a pseudo-terminal, as a person would type."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time

from heron import LLM
from tests.cli.conftest import Heron, greedy

NUM_PREDICT = 12
SYSTEM = "You are a pirate."


class Terminal:
    """``heron ARGS`` on a pseudo-terminal (200 columns): type lines, read the screen."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heron.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.screen = ""
        self.pos = 0

    def read_until(self, marker: str, timeout: float = 120) -> str:
        """Everything printed from the last read up to and including ``marker``."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(marker, self.pos)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} in {self.screen[self.pos :]!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"exited before {marker!r}: {self.screen[self.pos :]!r}")
                self.screen += data.decode("utf-8", "replace").replace("\r", "")
        end = found + len(marker)
        text, self.pos = self.screen[self.pos : end], end
        return text

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def ask(self, line: str) -> str:
        """Type a line; return what it printed before the next prompt."""
        self.type(line)
        return self.read_until(">>> ")

    def finish(self, timeout: float = 30) -> int:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            raise
        finally:
            os.close(self.fd)
        return status


def test_repl_session(heron: Heron, offline_llm: LLM) -> None:
    q1 = "What is the capital of France?"
    q2 = "Name one colour.\nAnswer in one word."
    term = Terminal(["run", "smollm2"], heron.env)
    try:
        term.read_until(">>> ")
        assert "Set parameter 'temperature' to '0'" in term.ask("/set parameter temperature 0")
        assert "Set parameter 'num_predict' to '12'" in term.ask(
            f"/set parameter num_predict {NUM_PREDICT}"
        )
        assert "Set system message." in term.ask(f"/set system {SYSTEM}")
        assert SYSTEM in term.ask("/show system")

        out1 = greedy(offline_llm, [{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": q1}], NUM_PREDICT)  # fmt: skip
        assert out1.strip() and out1 in term.ask(q1)

        # multi-line input; the conversation so far goes with it
        term.type('"""Name one colour.')
        term.read_until("... ")
        reply = term.ask('Answer in one word."""')
        history = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q1},
            {"role": "assistant", "content": out1},
            {"role": "user", "content": q2},
        ]
        assert greedy(offline_llm, history, NUM_PREDICT) in reply

        shown = term.ask("/show parameters")
        assert "User defined parameters:" in shown
        assert "temperature                    0\n" in shown
        assert "num_predict                    12\n" in shown
        assert "Model defined parameters:" in shown

        assert "Model" in term.ask("/show info") and "architecture" in term.screen
        assert "Unknown command '/nope'" in term.ask("/nope")
        assert "/set" in term.ask("/?") and '"""' in term.screen

        # /clear forgets the conversation but keeps the system message
        assert "Cleared session context" in term.ask("/clear")
        assert out1 in term.ask(q1)

        term.type("/bye")
        assert term.finish() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_repl_verbose_and_ctrl_d(heron: Heron) -> None:
    term = Terminal(["run", "smollm2", "--verbose"], heron.env)
    try:
        term.read_until(">>> ")
        term.ask("/set parameter num_predict 3")
        reply = term.ask("Hi")
        assert "eval count:           3 token(s)" in reply
        assert "time to first token:" in reply
        assert "Set 'quiet' mode." in term.ask("/set quiet")
        assert "eval count" not in term.ask("Hi")
        os.write(term.fd, b"\x04")  # Ctrl-D on an empty line ends the session
        assert term.finish() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
