"""The contract between `training` (which writes models/) and `service` (which reads it).

Defined once, imported by both; it imports neither torch nor onnxruntime.
"""

from contract.graph import (
    GRAPH_VERSION,
    IDX,
    LOGITS,
    POS,
    key_shape,
    new_kv_names,
    past_names,
    value_shape,
)
from contract.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    DataInfo,
    FileEntry,
    Manifest,
    ManifestError,
    Metrics,
    TrainingInfo,
    sha256_of,
)

__all__ = [
    "GRAPH_VERSION",
    "IDX",
    "LOGITS",
    "MANIFEST_FILE",
    "POS",
    "SCHEMA_VERSION",
    "WEIGHTS_FILE",
    "DataInfo",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "Metrics",
    "TrainingInfo",
    "key_shape",
    "new_kv_names",
    "past_names",
    "sha256_of",
    "value_shape",
]
