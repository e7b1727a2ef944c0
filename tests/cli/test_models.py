"""``pull``, ``list``, ``ps``, ``show``, ``create``, ``cp``, ``rm`` and ``stop`` against a real
server and store."""

from __future__ import annotations

import re
from pathlib import Path

from heron import LLM
from tests.cli.conftest import PIRATE, Heron, greedy


def names(listing: str) -> list[str]:
    return [line.split()[0] for line in listing.splitlines()[1:]]


# ----------------------------------------------------------------------------- create
def test_create_from_a_gguf_file(heron: Heron, pirate: str) -> None:
    assert "gathering model components" in pirate
    assert re.search(r"^copying file [0-9a-f]{12} .* MB", pirate, re.M)  # the GGUF upload
    assert pirate.rstrip().endswith("success")
    assert "pirate:latest" in names(heron("list").stdout)


def test_modelfile_system_and_parameters_take_effect(
    heron: Heron, pirate: str, offline_llm: LLM
) -> None:
    question = "Who are you?"
    r = heron("run", "pirate", question, "--verbose")
    assert r.returncode == 0, r.stderr
    messages = [{"role": "system", "content": PIRATE}, {"role": "user", "content": question}]
    assert r.stdout == greedy(offline_llm, messages, 6) + "\n"
    assert re.search(r"^eval count:\s+6 token\(s\)$", r.stderr, re.M)


def test_show(heron: Heron, pirate: str) -> None:
    assert heron("show", "pirate", "--system").stdout == PIRATE + "\n"
    params = heron("show", "pirate", "--parameters").stdout
    assert re.search(r"^temperature\s+0(\.0)?$", params, re.M), params
    assert re.search(r"^num_predict\s+6$", params, re.M), params
    assert heron("show", "pirate", "--license").stdout.startswith("MIT License\nCopyright")
    modelfile = heron("show", "pirate", "--modelfile").stdout
    assert "FROM " in modelfile and "SYSTEM" in modelfile and "num_predict 6" in modelfile
    assert heron("show", "pirate", "--template").stdout.strip()
    summary = heron("show", "pirate").stdout
    for text in ("  Model", "architecture        llama", "parameters          134.52M",
                 "quantization        Q4_1", "  Parameters", "  System", PIRATE, "  License",
                 "MIT License"):  # fmt: skip
        assert text in summary, (text, summary)
    r = heron("show", "pirate", "--system", "--license")
    assert r.returncode != 0


def test_create_from_a_model_name(heron: Heron, pirate: str, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(
        "FROM pirate\nSYSTEM You are a parrot.\nMESSAGE user Hello\nMESSAGE assistant Squawk!\n"
    )
    r = heron("create", "parrot", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "gathering model components" not in r.stderr  # nothing to upload
    assert heron("show", "parrot", "--system").stdout == "You are a parrot.\n"
    assert re.search(r"^num_predict\s+6$", heron("show", "parrot", "--parameters").stdout, re.M)
    modelfile = heron("show", "parrot", "--modelfile").stdout
    assert "MESSAGE user" in modelfile and "Squawk!" in modelfile


def test_create_from_an_hf_directory(heron: Heron, tmp_path: Path) -> None:
    from tests.models.tiny import build

    hf = build("llama3", tmp_path / "tiny")
    (hf / "1_Pooling").mkdir()
    (hf / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (hf / ".cache").mkdir()
    (hf / ".cache" / "x.lock").write_text("")  # hidden: not uploaded
    (tmp_path / "Modelfile").write_text("FROM ./tiny\n")
    r = heron("create", "tiny-hf", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "copying file" in r.stderr
    info = heron("show", "tiny-hf").stdout
    assert "architecture        llama" in info, info
    # the same files again: the server has every blob, so nothing is uploaded
    r = heron("create", "tiny-hf-2", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "copying file" not in r.stderr
    listing = heron("list").stdout
    assert {"tiny-hf:latest", "tiny-hf-2:latest"} <= set(names(listing))
    ids = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:]}
    assert ids["tiny-hf:latest"] == ids["tiny-hf-2:latest"]


def test_create_refuses_what_it_cannot_do(no_server: Heron, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM smollm2\nADAPTER ./lora.gguf\n")
    r = no_server("create", "lora", "-f", str(modelfile))
    assert r.returncode == 1
    assert r.stderr.strip() == f"Error: ADAPTER {tmp_path / 'lora.gguf'}: no such file or directory"
    modelfile.write_text("FROM ./missing.gguf\n")
    r = no_server("create", "x", "-f", str(modelfile))
    assert r.returncode == 1 and "no such file or directory" in r.stderr
    modelfile.write_text("PARAMETER temperature 0\n")  # no FROM
    r = no_server("create", "x", "-f", str(modelfile))
    assert r.returncode == 1 and r.stderr.startswith("Error: ")
    r = no_server("create", "x", "-f", str(tmp_path / "nope"))
    assert r.returncode == 1 and "could not read the Modelfile" in r.stderr
    no_server.cwd = tmp_path  # -f defaults to ./Modelfile
    modelfile.write_text("FROM smollm2\nADAPTER x\nADAPTER y\n")
    assert "one ADAPTER per model" in no_server("create", "x").stderr


def test_create_rejects_path_like_names(heron: Heron, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM smollm2\n")
    for name in ("../x", "/abs/x", "a/b/c/d"):
        r = heron("create", name, "-f", str(tmp_path / "Modelfile"))
        assert r.returncode == 1, name
        assert r.stderr.rstrip().splitlines()[-1].startswith("Error: ")


# -------------------------------------------------------------------- cp, rm, ps, stop
def test_cp_and_rm(heron: Heron, pirate: str) -> None:
    r = heron("cp", "pirate", "pirate-copy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "copied 'pirate' to 'pirate-copy'"
    listing = heron("list").stdout
    ids = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:]}
    assert ids["pirate-copy:latest"] == ids["pirate:latest"]
    assert heron("show", "pirate-copy", "--system").stdout == PIRATE + "\n"

    r = heron("rm", "pirate-copy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "deleted 'pirate-copy'"
    assert "pirate-copy:latest" not in names(heron("list").stdout)
    assert "pirate:latest" in names(heron("list").stdout)  # the shared blobs stay
    r = heron("show", "pirate-copy")
    assert r.returncode == 1 and r.stderr.strip() == "Error: model 'pirate-copy' not found"
    r = heron("rm", "pirate-copy")
    assert r.returncode == 1 and r.stderr.startswith("Error: ")
    r = heron("cp", "no-such-model", "other")
    assert r.returncode == 1 and r.stderr.startswith("Error: ")


def test_rm_several(heron: Heron, pirate: str) -> None:
    for copy in ("pirate-a", "pirate-b"):
        assert heron("cp", "pirate", copy).returncode == 0
    r = heron("rm", "pirate-a", "pirate-b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["deleted 'pirate-a'", "deleted 'pirate-b'"]


def test_ps_and_stop(heron: Heron, pirate: str) -> None:
    assert heron("run", "pirate", "Hi", "--keepalive", "10m").returncode == 0
    r = heron("ps")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(line for line in rows if line.startswith("pirate:latest"))
    assert re.match(
        r"^pirate:latest\s+[0-9a-f]{12}\s+\d+(\.\d)? [KMG]B\s+100% CPU\s+\d+\s+"
        r"(9|10) minutes from now$",
        row,
    ), row
    r = heron("stop", "pirate")
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith("pirate:latest") for line in heron("ps").stdout.splitlines())
    r = heron("stop", "pirate")
    assert r.returncode == 1 and r.stderr.strip() == 'Error: couldn\'t find model "pirate" to stop'
