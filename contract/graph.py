"""Names of the exported graphs' inputs and outputs (see docs/model-repository.md).

Window models (bigram, mlp, wavenet): `idx` int64 [batch, block_size] -> `logits` float32 [batch, vocab].
GPT, one step graph for prefill and decode:
  `idx` int64 [batch, new], `pos` int64 [1], `past_key_i`/`past_value_i` float32 [batch, n_head, past, head_dim]
  -> `logits` float32 [batch, vocab] (last new position), `present_key_i`/`present_value_i`
  [batch, n_head, past + new, head_dim].
TorchScript files take the same inputs positionally and return the same outputs as a tuple.
"""

IDX = "idx"
POS = "pos"
LOGITS = "logits"


def past_names(n_layer: int) -> list[str]:
    """Cache inputs in graph order: past_key_0, past_value_0, past_key_1, ..."""
    return [f"past_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """Cache outputs in graph order, matching `past_names`."""
    return [f"present_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]
