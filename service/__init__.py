"""charlm's HTTP service: LitServe front end (service.server) over the shared `engine` package.

Kept import-light on purpose: `import service` must not pull in litserve, onnxruntime or torch, so the
CLI can check its options quickly and tools can import submodules selectively.
"""

__version__ = "0.1.0"
