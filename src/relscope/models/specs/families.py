"""The supported families. Each entry is the whole of what relscope knows about a family."""

from relscope.models.specs.base import SPECS, ModelSpec

_LLAMA_LIKE = dict(
    backbone="model",
    layers="model.layers",
    final_norm="model.norm",
    attention="self_attn",
    mlp="mlp",
    projections={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
)

for _family in ("llama", "mistral", "qwen2", "qwen3", "gemma"):
    SPECS.register(_family, ModelSpec(model_type=_family, **_LLAMA_LIKE))

for _family in ("gemma2", "gemma3_text"):  # sandwich norms: each block's output is normed before the residual add
    SPECS.register(_family, ModelSpec(model_type=_family, **_LLAMA_LIKE, mlp_read_norm="pre_feedforward_layernorm",
                                      attention_write_norm="post_attention_layernorm",
                                      mlp_write_norm="post_feedforward_layernorm"))

SPECS.register(
    "phi3",
    ModelSpec(
        model_type="phi3",
        backbone="model",
        layers="model.layers",
        final_norm="model.norm",
        attention="self_attn",
        mlp="mlp",
        projections={
            "q": "self_attn.qkv_proj",
            "k": "self_attn.qkv_proj",
            "v": "self_attn.qkv_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_up_proj",
            "up": "mlp.gate_up_proj",
            "down": "mlp.down_proj",
        },
        fused_qkv=True,
        fused_gate_up=True,
        activation="mlp.activation_fn",
    ),
)

SPECS.register(
    "gpt_neox",
    ModelSpec(
        model_type="gpt_neox",
        backbone="gpt_neox",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attention="attention",
        mlp="mlp",
        projections={
            "q": "attention.query_key_value",
            "k": "attention.query_key_value",
            "v": "attention.query_key_value",
            "o": "attention.dense",
            "up": "mlp.dense_h_to_4h",
            "down": "mlp.dense_4h_to_h",
        },
        fused_qkv=True,
        qkv_layout="per_head",
        activation="mlp.act",
    ),
)
