"""The HTTP API, one module per route family, each keeping its request model, translation and response
shapes together (as LitServe keeps OpenAISpec's models beside it): `generate` (native), `completions`
and `chat` (OpenAI's), `tokenizer` (vLLM's), `playground` (the web page), `probes` (health, readiness,
metrics, the model list). `routes` registers every route, in one place; `gateway` runs a generation
request for any family; `sampling`, `prompts`, `reply`, `logprobs`, `bodies` and `sse` are what the
families share.
"""
