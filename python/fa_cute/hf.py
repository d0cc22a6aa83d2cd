"""Hugging Face transformers: run a model's attention on fa_cute.

    import fa_cute.hf
    fa_cute.hf.register()                      # once per process; returns "fa_cute"
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="fa_cute",
                                                 dtype=torch.bfloat16).cuda()
    with torch.inference_mode():
        model.generate(...)

`register` adds `attention_forward` to transformers' `AttentionInterface` and, under the same
name, transformers' FlashAttention mask function to its `AttentionMaskInterface`: that one
gives the attention function no mask where the batch is plain causal (no padding) and the
2-D padding mask otherwise, which `attention_forward` refuses. (Without a mask function of
its own, an implementation gets no mask at all, and padding would be ignored silently.)

Supported: prefill (causal, aligned bottom-right, so a prefill chunk after cached tokens
sees them all) and decode with a cache whose keys are all valid (DynamicCache, the
default), grouped-query and multi-query heads (no K/V copies), sliding windows (Mistral,
Gemma 2/3: the `sliding_window` argument, as transformers' FlashAttention integration reads
it, each query seeing itself and the sliding_window - 1 keys before it) and logit
softcapping (Gemma 2: `softcap`), bf16/fp16 on CUDA, inference and training (gradients
through `fa_cute.forward`, for the head dims its backward takes). Refused with an error
naming what to change: padding (an attention_mask with zeros, or a StaticCache, whose
unfilled slots are masked), dropout in training, attention sinks (s_aux), position biases,
output_attentions=True. Packed batches (padding-free training: several sequences in one
row, given by transformers' `cu_seq_lens_q` / `cu_seq_lens_k` / `max_length_q` /
`max_length_k`, or by `position_ids` that restart within the row) run on
`fa_cute.varlen_forward`, each sequence attending to itself only; a paged cache's
`block_table` is refused.

transformers is imported only by `register`: `import fa_cute` never needs it.
"""

from typing import Optional, Tuple

import torch

from . import _api
from ._varlen import varlen_forward

NAME = "fa_cute"

# Keyword arguments some models pass that change the attention computed; fa_cute computes
# none of them, so any value but None is refused rather than ignored.
_UNSUPPORTED = {
    "s_aux": "attention sinks",
    "position_bias": "an additive position bias",
}


def register(name: str = NAME) -> str:
    """Make `attn_implementation=name` (default "fa_cute") run `attention_forward`, for
    models created after this call (and for `model.set_attn_implementation(name)`)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError as exc:
        raise ImportError("fa_cute.hf.register needs transformers with AttentionInterface and "
                          "AttentionMaskInterface (4.53 or newer; tested with 5.x): pip install "
                          f"-U transformers ({exc})") from exc
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None, **kwargs) -> Tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query (batch, nheads, seqlen_q, headdim),
    key and value (batch, nheads_k, seqlen_k, headdim), the last seqlen_q positions of the
    sequence; returns (output (batch, seqlen_q, nheads, headdim), None: no weights)."""
    if attention_mask is not None:
        raise ValueError(
            f"attention_mask: the {NAME} attention implementation runs plain causal attention "
            "over every cached key, and was given a mask (padding in the batch, or a "
            "StaticCache whose unfilled slots are masked); pass unpadded batches (one "
            "sequence, or sequences of equal length) with the default DynamicCache, or use "
            "attn_implementation='sdpa'")
    if dropout:
        raise ValueError(f"dropout must be 0.0: {NAME} has no attention dropout; got {dropout} "
                         "(the model is in training mode: call model.eval(), or set the "
                         "config's attention_dropout to 0)")
    for arg, what in _UNSUPPORTED.items():
        if kwargs.get(arg) is not None:
            raise ValueError(f"{arg} must be None: {NAME} does not support {what}; got "
                             f"{kwargs[arg]!r}; use attn_implementation='sdpa' or 'eager'")
    if kwargs.get("output_attentions"):
        raise ValueError(f"output_attentions must be False: {NAME} does not compute the "
                         "attention weights; use attn_implementation='eager' for them")
    if kwargs.get("block_table") is not None:
        raise ValueError(f"block_table must be None: {NAME} does not run transformers' paged "
                         "cache (continuous batching); call fa_cute.forward_with_kvcache, or use "
                         "attn_implementation='sdpa'")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    window_size = _window(kwargs.get("sliding_window"), bool(causal))
    softcap = kwargs.get("softcap")
    packed = _packed_sequences(query, kwargs)
    if packed is not None:
        # One row of several sequences: (1, heads, total, d) viewed as packed (total, heads, d).
        cu_q, cu_k, max_q, max_k = packed
        out = varlen_forward(query[0].transpose(0, 1), key[0].transpose(0, 1),
                             value[0].transpose(0, 1), cu_q, cu_k, max_q, max_k,
                             causal=bool(causal), softmax_scale=scaling, window_size=window_size,
                             softcap=0.0 if softcap is None else softcap)
        return out.unsqueeze(0), None
    # Views (batch, seqlen, nheads, headdim) of transformers' tensors: no copies.
    out = _api.forward(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                       causal=bool(causal), softmax_scale=scaling, window_size=window_size,
                       softcap=0.0 if softcap is None else softcap)
    # Laid out like query; callers may .view() the result, which needs it contiguous (a
    # no-op for the usual (batch, seqlen, nheads, headdim) projections).
    return out.contiguous(), None


def _packed_sequences(query: torch.Tensor, kwargs: dict):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) where the call packs several
    sequences into its one row, else None: transformers' cu_seq_lens / max_length keywords,
    or position ids (batch 1, more than one query) that restart, as transformers'
    FlashAttention integration reads them (that check reads the ids on the host)."""
    names = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    given = [kwargs.get(name) for name in names]
    if any(x is not None for x in given):
        missing = [name for name, x in zip(names, given) if x is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: packed sequences need all of {names}")
        if query.shape[0] != 1:
            raise ValueError(f"cu_seq_lens_q: packed sequences come in one row (batch 1), got "
                             f"batch {query.shape[0]}")
        cu_q, cu_k, max_q, max_k = given
        return (cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k))
    position_ids = kwargs.get("position_ids")
    if position_ids is None or query.shape[0] != 1 or query.shape[2] == 1:
        return None
    ids = position_ids.reshape(-1)
    if ids.numel() != query.shape[2]:
        return None
    first = ids.min()
    if bool((torch.arange(ids.numel(), device=ids.device) + first != ids).any()):
        starts = (ids == first).nonzero().view(-1).to(torch.int32)
        if int(starts[0]) != 0:
            raise ValueError(f"position_ids: packed sequences must start at the row's first "
                             f"position (with id {int(first)}), got {ids[:4].tolist()}...")
        cu = torch.cat([starts, torch.tensor([ids.numel()], dtype=torch.int32, device=ids.device)])
        longest = int(cu.diff().max())
        return cu, cu, longest, longest
    return None


def _window(sliding_window, causal: bool) -> Tuple[int, int]:
    """forward's window_size for transformers' sliding_window (None: no window): W keys a
    query, itself and the W - 1 before it (and, not causal, the W - 1 after it), as
    transformers' FlashAttention integration passes it on."""
    if sliding_window is None:
        return (-1, -1)
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
        raise ValueError(f"sliding_window must be None or an int >= 1 (the keys a query sees); "
                         f"got {sliding_window!r}")
    return (sliding_window - 1, 0 if causal else sliding_window - 1)
