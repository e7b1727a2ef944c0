"""A model as the store holds it, and the error for a name it does not hold."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from heron.store.manifest import Manifest
from heron.store.modelfile import Modelfile
from heron.store.names import ModelName

__all__ = ["ModelNotFoundError", "StoredModel"]


class ModelNotFoundError(LookupError):
    """No manifest under that name."""


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model in the store, with its small layers (config, params, texts) already read."""

    name: ModelName
    manifest: Manifest
    digest: str  # of the manifest
    size: int  # bytes of the config and all layers
    modified_at: float  # manifest file mtime
    format: str  # "gguf" | "safetensors"
    parameters: dict[str, Any]  # typed; "stop" is a list
    template: str | None
    system: str | None
    license: list[str]
    messages: list[dict[str, str]]
    family: str | None
    config: dict[str, Any] = field(default_factory=dict)  # the config blob's JSON

    @property
    def display(self) -> str:
        return self.name.display

    def to_modelfile(self, from_: str | None = None) -> Modelfile:
        """The Modelfile that recreates this model (for ``show --modelfile``); FROM is the
        model's own name unless ``from_`` is given."""
        params: builtins.list[tuple[str, Any]] = []
        for key, value in self.parameters.items():
            values = value if key == "stop" and isinstance(value, builtins.list) else [value]
            params.extend((key, v) for v in values)
        return Modelfile(
            from_=from_ if from_ is not None else self.name.display,
            parameters=params,
            template=self.template,
            system=self.system,
            license=builtins.list(self.license),
            messages=[dict(m) for m in self.messages],
        )
