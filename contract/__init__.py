"""The contract between `training` (which writes models/) and `service` (which reads it).

Defined once, imported by both; it imports neither torch nor onnxruntime.
"""

from contract.graph import (
    IDX,
    LOGITS,
    POS,
    past_names,
    present_names,
)
from contract.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    DataInfo,
    FileEntry,
    Manifest,
    ManifestError,
    Metrics,
    TrainingInfo,
    sha256_of,
)

__all__ = [
    "IDX",
    "LOGITS",
    "MANIFEST_FILE",
    "POS",
    "SCHEMA_VERSION",
    "DataInfo",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "Metrics",
    "TrainingInfo",
    "past_names",
    "present_names",
    "sha256_of",
]
