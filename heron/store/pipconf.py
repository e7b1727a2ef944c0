"""Where pip would look for packages: its configuration files, sections and ``PIP_*``
variables, merged with pip's precedence, so that catalog pulls use the same indexes, find-links
and CA bundle as ``pip install`` (``HERON_PYPI_INDEX_URL`` overrides the indexes)."""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from heron import env
from heron.store.catalog import PullError

__all__ = ["DEFAULT_INDEX_URL", "IndexConfig", "pip_config_files", "pip_index_config"]

DEFAULT_INDEX_URL = "https://pypi.org/simple"
# pip applies [global], then the command's section, then PIP_* variables; Heron installs.
_SECTIONS = ("global", "download", "install")


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """Where to look for wheels, in order: the indexes, then the find-links locations."""

    index_urls: tuple[str, ...]
    find_links: tuple[str, ...] = ()
    cert: str | None = None  # pip's ``cert``: the CA bundle that replaces the default one

    def __post_init__(self) -> None:
        if not self.index_urls and not self.find_links:
            raise ValueError("no package index and no find-links location configured")


def pip_config_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """pip's configuration files, lowest precedence first (global, user, site, PIP_CONFIG_FILE)."""
    environ = os.environ if environ is None else environ
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(os.pathsep) if d]
    files.append(Path("/etc/pip.conf"))
    config_file = environ.get("PIP_CONFIG_FILE")
    home = Path(environ.get("HOME") or Path.home())
    if not (config_file and Path(config_file).exists()):
        files.append(home / ".pip" / "pip.conf")
        xdg_home = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
        files.append(Path(xdg_home) / "pip" / "pip.conf")
    files.append(Path(sys.prefix) / "pip.conf")
    venv = environ.get("VIRTUAL_ENV")
    if venv and Path(venv) / "pip.conf" not in files:
        files.append(Path(venv) / "pip.conf")
    if config_file and config_file != os.devnull:
        files.append(Path(config_file))
    return files


def pip_index_config(
    environ: Mapping[str, str] | None = None, config_files: Sequence[Path] | None = None
) -> IndexConfig:
    """The indexes, find-links and CA bundle pip would use for ``pip install``.

    Config files are merged in order, ``[install]`` beats ``[download]`` beats ``[global]``
    whichever file they come from, and ``PIP_INDEX_URL``/``PIP_EXTRA_INDEX_URL``/
    ``PIP_FIND_LINKS``/``PIP_NO_INDEX``/``PIP_CERT`` beat every file, as in pip.
    ``HERON_PYPI_INDEX_URL`` (space-separated URLs) replaces the indexes and find-links."""
    if environ is None:
        environ, override = os.environ, env.pypi_index_url()
    else:
        override = environ.get("HERON_PYPI_INDEX_URL")
    merged: dict[str, dict[str, str]] = {}
    for path in pip_config_files(environ) if config_files is None else config_files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError, OSError):
            continue  # pip refuses to run on a broken file; Heron skips it
        for section in parser.sections():
            merged.setdefault(section, {}).update(
                {k.replace("_", "-"): v for k, v in parser.items(section)}
            )
    values: dict[str, str] = {}
    for section in _SECTIONS:
        values.update(merged.get(section, {}))
    for key in ("index-url", "extra-index-url", "find-links", "no-index", "cert"):
        env_value = environ.get("PIP_" + key.upper().replace("-", "_"))
        if env_value:
            values[key] = env_value
    cert = values.get("cert", "").strip() or None
    if override:
        return IndexConfig(index_urls=tuple(override.split()), cert=cert)
    index_url = values.get("index-url", "").strip() or DEFAULT_INDEX_URL
    indexes = [index_url, *values.get("extra-index-url", "").split()]
    if values.get("no-index", "").strip().lower() in ("1", "true", "yes", "on"):
        indexes = []
    find_links = values.get("find-links", "").split()
    if not indexes and not find_links:
        raise PullError("pip is configured with no-index and no find-links: nowhere to look")
    return IndexConfig(
        index_urls=tuple(dict.fromkeys(indexes)),
        find_links=tuple(dict.fromkeys(find_links)),
        cert=cert,
    )
