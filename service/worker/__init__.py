"""The worker processes: the LitAPI that loads one slot engine per model (`api`), the LitLoop that drives
it (`loop`), and the continuous-batching `scheduler` over the engines with its per-request `jobs`.
Nothing here imports FastAPI; the worker talks to the HTTP side only through service.protocol."""
