"""Read a Hugging Face ``config.json`` into a `ModelArch`.

Field names differ between families (Llama/Qwen/Mistral use ``hidden_size``;
GLM's ChatGLM configs use ``ffn_hidden_size``, ``multi_query_group_num``;
GPT-2 uses ``n_embd``); the first name found wins. ``hidden_act`` of
``silu``/``swiglu``/``gelu_*glu`` means a gated MLP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from suanli.catalog.types import MLA, ModelArch, MoE
from suanli.errors import CatalogFileError

_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "num_layers", "n_layer"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads", "multi_query_group_num", "num_kv_heads"),
    "ffn": ("intermediate_size", "ffn_hidden_size", "n_inner"),
    "vocab": ("vocab_size", "padded_vocab_size"),
    "max_seq_len": ("max_position_embeddings", "seq_length", "n_positions"),
}
_GATED = {"silu", "swiglu", "swish", "gelu_glu", "geglu", "gelu_pytorch_tanh_glu"}


def _first(cfg: dict[str, Any], key: str) -> Any:
    for alias in _ALIASES[key]:
        if cfg.get(alias) is not None:
            return cfg[alias]
    return None


def _int(cfg: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = _first(cfg, key)
    if value is None:
        if default is not None:
            return default
        raise CatalogFileError(f"{where}: missing {' or '.join(_ALIASES[key])}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CatalogFileError(f"{where}: {_ALIASES[key][0]} must be a positive integer")
    return value


def arch_from_hf(cfg: dict[str, Any], name: str, where: str) -> ModelArch:
    """Build a `ModelArch` from a parsed config mapping."""
    hidden = _int(cfg, "hidden", where)
    layers = _int(cfg, "layers", where)
    heads = _int(cfg, "heads", where)
    kv_heads = _int(cfg, "kv_heads", where, default=heads)
    ffn = _int(cfg, "ffn", where, default=4 * hidden)
    if hidden % heads and not cfg.get("head_dim"):
        raise CatalogFileError(f"{where}: hidden_size {hidden} is not a multiple of heads {heads}")
    act = str(cfg.get("hidden_act") or cfg.get("activation_function") or "gelu").lower()
    gated = act in _GATED or bool(cfg.get("gated_mlp", False))
    if str(cfg.get("model_type", "")).startswith("chatglm"):
        gated = True  # ChatGLM/GLM-4 configs omit hidden_act; their MLP is SwiGLU
    n_experts = (
        cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts")
    )
    moe = None
    if n_experts:
        top_k = cfg.get("num_experts_per_tok") or cfg.get("moe_top_k") or 2
        moe = MoE(
            num_experts=int(n_experts),
            experts_per_token=int(top_k),
            expert_ffn=int(cfg.get("moe_intermediate_size") or ffn),
            num_shared_experts=int(cfg.get("n_shared_experts") or 0),
            first_dense_layers=int(cfg.get("first_k_dense_replace") or 0),
            moe_layer_freq=int(cfg.get("moe_layer_freq") or 1),
        )
    mla = None
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if cfg.get("kv_lora_rank"):
        mla = MLA(
            q_lora_rank=int(cfg.get("q_lora_rank") or 0),
            kv_lora_rank=int(cfg["kv_lora_rank"]),
            qk_nope_head_dim=int(cfg.get("qk_nope_head_dim") or 128),
            qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 64),
            v_head_dim=int(cfg.get("v_head_dim") or 128),
        )
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if heads % kv_heads:
        raise CatalogFileError(f"{where}: heads {heads} not a multiple of kv heads {kv_heads}")
    return ModelArch(
        name=name,
        display_name=str(cfg.get("_name_or_path") or name),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=ffn,
        vocab=_int(cfg, "vocab", where),
        gated_mlp=gated,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_seq_len=_int(cfg, "max_seq_len", where, default=2048),
        sources={"hidden": f"Hugging Face config {where}"},
        moe=moe,
        mla=mla,
        attention_bias=bool(cfg.get("attention_bias") or cfg.get("add_qkv_bias") or False),
        family=str(cfg.get("model_type", "")),
    )


def load_hf_config(path: Path) -> ModelArch:
    """Load ``path`` (a config.json), with errors that name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogFileError(
            f"{path}: cannot read model config ({exc.strerror}); give a catalog model name "
            "or the path of a Hugging Face config.json"
        ) from exc
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogFileError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(cfg, dict):
        raise CatalogFileError(f"{path}: expected a JSON object")
    name = path.parent.name if path.name == "config.json" else path.stem
    return arch_from_hf(cfg, name.lower() or "custom", str(path))
