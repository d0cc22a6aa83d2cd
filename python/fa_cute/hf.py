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
output_attentions=True.

transformers is imported only by `register`: `import fa_cute` never needs it.
"""

from typing import Optional, Tuple

import torch

from . import _api

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
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    window_size = _window(kwargs.get("sliding_window"), bool(causal))
    softcap = kwargs.get("softcap")
    # Views (batch, seqlen, nheads, headdim) of transformers' tensors: no copies.
    out = _api.forward(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                       causal=bool(causal), softmax_scale=scaling, window_size=window_size,
                       softcap=0.0 if softcap is None else softcap)
    # Laid out like query; callers may .view() the result, which needs it contiguous (a
    # no-op for the usual (batch, seqlen, nheads, headdim) projections).
    return out.contiguous(), None


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
