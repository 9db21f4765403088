"""Graph contract v2: names, shapes and layouts of the exported graphs (see docs/model-repository.md).

Window models (bigram, mlp, wavenet):
  `idx` int64 [batch, block_size] -> `logits` float32 [batch, vocab] (the next character after the window).

GPT, one step graph for prefill and decode, over a KV cache the *caller* owns:
  inputs  `idx` int64 [batch, new]          the new tokens of each row (rows may be right-padded)
          `pos` int64 [batch]               cached positions of each row = absolute position of its first new token
          `past_key_i` float32 [batch, n_head, head_dim, past]   keys, stored transposed (q @ K needs no transpose)
          `past_value_i` float32 [batch, n_head, past, head_dim]
  outputs `logits` float32 [batch, new, vocab]  for every new position (prefill scores a whole prompt)
          `new_key_i` float32 [batch, n_head, head_dim, new]   only what this step adds, in the cache's layout
          `new_value_i` float32 [batch, n_head, new, head_dim]

Masking rule: the new token i of row b sits at position pos[b] + i; it attends to cache column j iff
j < pos[b], and to new token j iff j <= i. Cache columns at or past pos[b] may hold any finite values
(stale entries of an earlier sequence, zeros): they never reach a result (a NaN or inf would, through
0 * x in the weighted sum of values). Positions past block_size - 1 are clamped,
so right-padding a row is harmless; the caller ignores the outputs of its padding. The caller writes
new_key_i[b, :, :, i] into its cache column pos[b] + i (likewise values) before the next step; the graph
never copies the cache. `past` may be anything >= max(pos) (0 for a fresh prefill), so a caller can pass
only the live prefix of its cache.

TorchScript files take the same inputs positionally and return the same outputs as a tuple.

GPT, optional decode graph (model.decode.onnx): one new token per row, the cache updated *in place*:
  inputs  `idx` int64 [batch, 1], `pos` int64 [batch]      as above, new == 1
          `cache_key_i`, `cache_value_i` float32 [batch, n_head, columns, head_dim]   keys and values laid
                                    out alike (not transposed), columns > max(pos)
  outputs `logits` float32 [batch, 1, vocab]
          `present_key_i`, `present_value_i`   the same shape: the cache with row b's new key and value
                                    at column pos[b]. The caller binds them to the input's buffers
                                    (ONNX Runtime's GroupQueryAttention then shares past and present), so
                                    the graph writes that one column and copies nothing else.
                                    Unbound, ONNX Runtime returns fresh arrays whose columns past
                                    pos[b] are not the cache's (zeros): read only columns <= pos[b].
Row b attends to columns 0..pos[b] (its new entry included) and reads no column past pos[b]: the cost
follows each row's own length, not the longest row's.
"""

GRAPH_VERSION = 2

IDX = "idx"
POS = "pos"
LOGITS = "logits"


def past_names(n_layer: int) -> list[str]:
    """Cache inputs in graph order: past_key_0, past_value_0, past_key_1, ..."""
    return [f"past_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


def new_kv_names(n_layer: int) -> list[str]:
    """What each step adds to the cache, in graph order matching `past_names`."""
    return [f"new_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


def cache_names(n_layer: int) -> list[str]:
    """The decode graph's cache inputs: cache_key_0, cache_value_0, cache_key_1, ..."""
    return [f"cache_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """The decode graph's cache outputs (the inputs' buffers, written in place), matching `cache_names`."""
    return [f"present_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


def cache_shape(batch: int, n_head: int, head_dim: int, length: int) -> tuple[int, int, int, int]:
    """Layout of the decode graph's key and value caches (both alike)."""
    return (batch, n_head, length, head_dim)


def key_shape(batch: int, n_head: int, head_dim: int, length: int) -> tuple[int, int, int, int]:
    """Layout of a key cache (transposed: head_dim before length)."""
    return (batch, n_head, head_dim, length)


def value_shape(batch: int, n_head: int, head_dim: int, length: int) -> tuple[int, int, int, int]:
    """Layout of a value cache."""
    return (batch, n_head, length, head_dim)
