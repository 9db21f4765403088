"""The contract between `training` (which writes models/) and the `engine` and `service` (which read it):
the manifest schema, the graphs' I/O names and shapes, and the model repository scan.

Defined once, imported by all; it imports neither torch nor onnxruntime nor numpy.
"""

from contract.families import ARCHS, FAMILIES, Arch, Family, family
from contract.graph import (
    GRAPH_VERSION,
    IDX,
    LOGITS,
    POS,
    cache_names,
    cache_shape,
    key_shape,
    new_kv_names,
    past_names,
    present_names,
    value_shape,
)
from contract.manifest import (
    DECODE_FILE,
    INT8_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    DataInfo,
    FileEntry,
    Manifest,
    ManifestError,
    Metrics,
    Precision,
    QuantizedGraph,
    TrainingInfo,
    sha256_of,
)
from contract.repository import ModelEntry, Repository, describe_unservable, log_left_out, scan_repository

__all__ = [
    "ARCHS",
    "DECODE_FILE",
    "FAMILIES",
    "GRAPH_VERSION",
    "IDX",
    "INT8_FILE",
    "LOGITS",
    "MANIFEST_FILE",
    "POS",
    "SCHEMA_VERSION",
    "WEIGHTS_FILE",
    "Arch",
    "DataInfo",
    "Family",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "Metrics",
    "ModelEntry",
    "Precision",
    "QuantizedGraph",
    "Repository",
    "TrainingInfo",
    "cache_names",
    "cache_shape",
    "describe_unservable",
    "family",
    "key_shape",
    "log_left_out",
    "new_kv_names",
    "past_names",
    "present_names",
    "scan_repository",
    "sha256_of",
    "value_shape",
]
