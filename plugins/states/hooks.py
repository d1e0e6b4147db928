"""The 13 states MindTransformer defines, in block order.

Which tensor each name is in a given family is the model adapter's business (its hook
map); these definitions say what the state *means*, so tables and tests agree on it.
"""

from mtbench.api import StateDefinition
from mtbench.hookspecs import hookimpl

_BLOCK, _ATTN, _FFN = "block input", "attention", "ffn & residual"

STATES = [
    ("input_hidden_state", _BLOCK, "residual stream entering the block", False),
    ("pre_attn_norm", _BLOCK, "block input after the pre-attention norm (what q/k/v read)", False),
    ("per_head_q", _ATTN, "query projection, heads x head_dim flattened, before RoPE", False),
    ("per_head_q_rope", _ATTN, "query as it enters attention: after QK-norm and RoPE", True),
    ("per_head_k", _ATTN, "key projection, n_kv heads x head_dim (no GQA repetition), before RoPE", False),
    ("per_head_k_rope", _ATTN, "key as it enters attention: after QK-norm and RoPE, n_kv heads", True),
    ("per_head_v", _ATTN, "value projection, n_kv heads x head_dim", False),
    ("per_head_context_vector", _ATTN, "attention-weighted values per head (input of o_proj)", False),
    ("attn_output", _ATTN, "output projection of attention (o_proj output)", False),
    ("post_attn_hidden_state", _FFN, "residual stream after the attention sub-block", False),
    ("pre_ffn_norm", _FFN, "FFN input after its norm", False),
    ("ffn_activated_state", _FFN, "FFN intermediate after the activation (e.g. SwiGLU: act(gate) * up)", False),
    ("ffn_output", _FFN, "output of the FFN sub-block (down projection)", False),
]


@hookimpl
def register_states():
    return [
        StateDefinition(name=name, stage=stage, description=desc, order=i, uses_rope=rope)
        for i, (name, stage, desc, rope) in enumerate(STATES)
    ]
