"""Content-addressed model store: names, blobs, manifests, Modelfiles, create and imports.

See ``store.py`` for the on-disk layout. Import the pieces from here::

    from heron.store import ModelStore, parse_name, parse_modelfile
"""

from __future__ import annotations

from heron.store.blobs import BlobStore, BlobWriter
from heron.store.files import DigestError, DigestMismatchError, SizeMismatchError, parse_digest
from heron.store.manifest import Layer, Manifest, ManifestError, parse_manifest
from heron.store.modelfile import Modelfile, ModelfileError, coerce_parameter, parse_modelfile
from heron.store.names import InvalidNameError, ModelName, parse_name
from heron.store.store import ModelNotFoundError, ModelStore, StoredModel

__all__ = [
    "BlobStore",
    "BlobWriter",
    "DigestError",
    "DigestMismatchError",
    "InvalidNameError",
    "Layer",
    "Manifest",
    "ManifestError",
    "ModelName",
    "ModelNotFoundError",
    "ModelStore",
    "Modelfile",
    "ModelfileError",
    "SizeMismatchError",
    "StoredModel",
    "coerce_parameter",
    "parse_digest",
    "parse_manifest",
    "parse_modelfile",
    "parse_name",
]
