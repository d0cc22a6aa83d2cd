"""fa_cute.hf (issue 14): registration with transformers, and what attention_forward refuses,
on CPU; a small randomly initialised Llama against transformers' SDPA on a GPU. Skipped
without transformers."""

import pytest
import torch

import fa_cute
from fa_cute import hf

transformers = pytest.importorskip("transformers")

# The brief's Llama (hidden 256, 8 heads) has head dim 32, which no kernel is built for: the
# config names a built one (64 where built), its q/k/v projections sized to match.
BUILT = sorted({c["head_dim"] for c in fa_cute.configs()})
HEAD_DIM = 64 if 64 in BUILT else BUILT[0]


def llama_config(**changes):
    args = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                head_dim=HEAD_DIM, num_hidden_layers=2, intermediate_size=512,
                vocab_size=1000)
    args.update(changes)
    return transformers.LlamaConfig(**args)


def bhsd(batch=2, heads=8, seqlen=5):
    return torch.randn(batch, heads, seqlen, HEAD_DIM).to(torch.bfloat16)


def test_register_adds_the_attention_and_its_mask() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    assert hf.register() == "fa_cute"
    assert AttentionInterface._global_mapping["fa_cute"] is hf.attention_forward
    assert AttentionMaskInterface._global_mapping["fa_cute"] is flash_attention_mask


def test_import_fa_cute_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, fa_cute, fa_cute.hf; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(attention_mask=torch.ones(2, 5, dtype=torch.bool)), r"^attention_mask: .*padding"),
    (dict(dropout=0.1), r"^dropout must be 0\.0: .*model\.eval\(\)"),
    (dict(sliding_window=0), r"^sliding_window must be None or an int >= 1"),
    (dict(softcap=-1.0), r"softcap"),
    (dict(s_aux=torch.zeros(8)), r"^s_aux must be None: .*sinks"),
    (dict(position_bias=torch.zeros(1, 8, 5, 5)), r"^position_bias must be None"),
    (dict(output_attentions=True), r"^output_attentions must be False"),
], ids=["mask", "dropout", "bad-sliding-window", "bad-softcap", "sinks", "position-bias",
        "output-attentions"])
def test_unsupported_features_are_refused(kwargs, pattern: str) -> None:
    args = dict(attention_mask=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        hf.attention_forward(torch.nn.Module(), bhsd(), bhsd(heads=2), bhsd(heads=2), **args)


@pytest.mark.parametrize("extras", [dict(sliding_window=None, softcap=None),
                                    dict(sliding_window=4, softcap=30.0)],
                         ids=["plain", "window-softcap"])
def test_a_supported_call_reaches_fa_cute(extras) -> None:
    """GQA in transformers' layout goes through as views, a sliding window and a softcap
    with it; on CPU the device check ends it."""
    with pytest.raises(ValueError, match="CUDA tensors only"):
        hf.attention_forward(torch.nn.Module(), bhsd(), bhsd(heads=2), bhsd(heads=2), None,
                             scaling=0.1, **extras)


def test_model_padding_is_refused() -> None:
    """A padded batch gets its mask through the registered mask function, and is refused
    (not ignored) before anything else."""
    hf.register()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(llama_config()).to(torch.bfloat16).eval()
    model.set_attn_implementation("fa_cute")
    ids = torch.randint(0, 1000, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    with torch.inference_mode():
        with pytest.raises(ValueError, match=r"^attention_mask: .*padding"):
            model(ids, attention_mask=mask)
        with pytest.raises(ValueError, match="CUDA tensors only"):
            model(ids, attention_mask=torch.ones_like(mask))


def test_model_in_grad_mode_goes_to_the_differentiable_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Training through the model: without a backward kernel the forward refuses before it
    runs; with one (a stand-in here) the call reaches fa_cute's checks (on CPU the device
    check ends it)."""
    from fa_cute import _C

    hf.register()
    model = transformers.LlamaForCausalLM(llama_config()).to(torch.bfloat16)
    model.set_attn_implementation("fa_cute")
    ids = torch.randint(0, 1000, (1, 4))
    monkeypatch.delattr(_C, "backward", raising=False)
    with pytest.raises(NotImplementedError, match=r"no backward kernel .*torch\.no_grad\(\)"):
        model(ids)
    monkeypatch.setattr(_C, "backward", lambda *args: None, raising=False)
    monkeypatch.setattr(_C, "default_backward_config", lambda *args: "bwd", raising=False)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        model(ids)


def _gemma2(sliding_window=16, softcap=50.0):
    """A small random Gemma 2: sliding-window layers and capped attention logits."""
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=HEAD_DIM,
        num_hidden_layers=2, intermediate_size=512, vocab_size=1000,
        sliding_window=sliding_window, attn_logit_softcapping=softcap,
        query_pre_attn_scalar=HEAD_DIM, attn_implementation="eager")
    return transformers.Gemma2ForCausalLM(config).eval()


def test_gemma2_window_and_softcap_reach_the_kernel(reference_forward) -> None:
    """On CPU with the kernel stood in (the float64 reference): a Gemma 2's sliding layers
    launch a window of sliding_window - 1 keys to the left, every layer its softcap, and the
    logits match eager attention's (which computes both) by the 2x rule."""
    hf.register()
    model = _gemma2()
    ids = torch.randint(0, 1000, (2, 40))
    with torch.inference_mode():
        exact = model(ids).logits.float()  # float32 eager
        model = model.to(torch.bfloat16)
        plain = model(ids).logits.float()  # bf16 eager
        model.set_attn_implementation("fa_cute")
        got = model(ids).logits.float()
    # Sliding and global layers, causal (the launch's right bound is the diagonal).
    windows = {(launch.window_left, launch.window_right) for launch in reference_forward}
    assert windows == {(15, -1), (-1, -1)} and all(launch.is_causal for launch in reference_forward)
    assert {launch.softcap for launch in reference_forward} == {50.0}
    # Within twice eager's own bf16 error (a window off by one key is 25x that).
    assert (got - exact).abs().max().item() <= 2 * (plain - exact).abs().max().item()


# On a GPU ------------------------------------------------------------------------------------

def _logits(model, prefill: torch.Tensor, steps: torch.Tensor):
    """Logits of a prefill and of each cached decode step (fixed tokens, so that every
    implementation sees the same inputs)."""
    out = model(prefill, use_cache=True)
    logits, cache = [out.logits[:, -1]], out.past_key_values
    for i in range(steps.shape[1]):
        out = model(steps[:, i:i + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
        cache = out.past_key_values
    return torch.stack(logits).float()


@pytest.mark.cuda
@pytest.mark.parametrize("prefill_len", [1, 37, 300])
def test_llama_logits_match_sdpa(prefill_len: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits of prefill and 4 cached decode steps on attn_implementation="fa_cute" against
    "sdpa", within twice the difference between PyTorch's own FLASH and CUDNN (else
    EFFICIENT) SDPA backends on the same model and inputs (twice: FlashAttention's 2x rule,
    as the kernel tests use), with a floor of 1e-3 of the logits' magnitude."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    hf.register()
    torch.manual_seed(0)
    config = llama_config(attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    prefill = torch.randint(0, 1000, (2, prefill_len), device="cuda")
    steps = torch.randint(0, 1000, (2, 4), device="cuda")
    with torch.inference_mode():
        ref = _logits(model, prefill, steps)
        # Some backends refuse enable_gqa=True: for the peers' difference transformers
        # repeats K/V heads instead (the same attention), so that each backend runs.
        import transformers.integrations.sdpa_attention as sdpa_attention

        monkeypatch.setattr(sdpa_attention, "use_gqa_in_sdpa", lambda *args: False)
        by_backend = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            if len(by_backend) == 2:
                break
            try:
                with sdpa_kernel(backend):
                    by_backend[backend] = _logits(model, prefill, steps)
            except RuntimeError:  # a backend that does not take these shapes
                continue
        monkeypatch.undo()
        assert len(by_backend) >= 2, f"SDPA backends that ran: {list(by_backend)}"
        flash, other = list(by_backend.values())[:2]
        peer_diff = (flash - other).abs().max().item()
        model.set_attn_implementation("fa_cute")
        got = _logits(model, prefill, steps)
    floor = 1e-3 * ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    assert torch.isfinite(got).all()
    assert diff <= max(2 * peer_diff, floor), (diff, peer_diff, floor, list(by_backend))


@pytest.mark.cuda
@pytest.mark.parametrize("prefill_len", [9, 70])
def test_gemma2_window_and_softcap_match_eager(prefill_len: int) -> None:
    """A small random Gemma 2 (sliding-window layers of 16 keys, attention logits capped at
    50) on "fa_cute" against transformers' "eager" attention, which computes both: logits of
    prefill and 4 cached decode steps within twice eager's own bf16 error (against the same
    model in float32), with a floor of 1e-3 of the logits' magnitude."""
    hf.register()
    model = _gemma2().to("cuda")
    prefill = torch.randint(0, 1000, (2, prefill_len), device="cuda")
    steps = torch.randint(0, 1000, (2, 4), device="cuda")
    with torch.inference_mode():
        exact = _logits(model, prefill, steps)  # float32 eager
        model = model.to(torch.bfloat16)
        ref = _logits(model, prefill, steps)
        model.set_attn_implementation("fa_cute")
        got = _logits(model, prefill, steps)
    floor = 1e-3 * exact.abs().max().item()
    bound = max(2 * (ref - exact).abs().max().item(), floor)
    assert torch.isfinite(got).all()
    assert (got - exact).abs().max().item() <= bound


# Packed sequences (padding-free training) ---------------------------------------------------

def _varlen_stand_in(calls):
    """hf.varlen_forward on CPU: the float64 reference, sequence by sequence."""
    from fa_cute._reference import varlen_attention_ref

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, causal, softmax_scale, window_size, softcap):
        calls.append(dict(cu_q=cu_q.tolist(), cu_k=cu_k.tolist(), max_q=max_q, max_k=max_k,
                          causal=causal, window_size=window_size, softcap=softcap))
        out = varlen_attention_ref(q, k, v, cu_q.tolist(), cu_k.tolist(),
                                   softmax_scale or q.shape[-1] ** -0.5, causal=causal,
                                   window_size=window_size, softcap=softcap)
        return out.to(q.dtype)
    return varlen


def test_packed_keywords_run_varlen(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(hf, "varlen_forward", _varlen_stand_in(calls))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    out, _ = hf.attention_forward(torch.nn.Module(), bhsd(batch=1), bhsd(batch=1, heads=2),
                                  bhsd(batch=1, heads=2), None, cu_seq_lens_q=cu,
                                  cu_seq_lens_k=cu, max_length_q=3, max_length_k=3,
                                  sliding_window=2)
    assert out.shape == (1, 5, 8, HEAD_DIM)
    assert calls == [dict(cu_q=[0, 2, 5], cu_k=[0, 2, 5], max_q=3, max_k=3, causal=True,
                          window_size=(1, 0), softcap=0.0)]


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(cu_seq_lens_q=torch.tensor([0, 5])), r"cu_seq_lens_k, max_length_q, max_length_k: packed"),
    (dict(block_table=torch.zeros(1, 1)), r"^block_table must be None"),
    (dict(position_ids=torch.tensor([[1, 2, 0, 1, 2]])), r"^position_ids: packed sequences must start"),
], ids=["incomplete", "paged", "position-ids-start"])
def test_packed_refusals(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        hf.attention_forward(torch.nn.Module(), bhsd(batch=1), bhsd(batch=1, heads=2),
                             bhsd(batch=1, heads=2), None, **kwargs)


def test_packed_llama_row_equals_its_sequences(reference_forward,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding-free batching (DataCollatorWithFlattening's position ids): one row holding
    three sequences gives each sequence the logits it gets alone (the kernels stood in);
    the row without its position ids would mix them."""
    calls = []
    monkeypatch.setattr(hf, "varlen_forward", _varlen_stand_in(calls))
    hf.register()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(llama_config()).to(torch.bfloat16).eval()
    model.set_attn_implementation("fa_cute")
    lengths = [5, 9, 4]
    seqs = [torch.randint(0, 1000, (1, n)) for n in lengths]
    with torch.inference_mode():
        alone = torch.cat([model(s).logits for s in seqs], dim=1).float()
        row = torch.cat(seqs, dim=1)
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        packed = model(row, position_ids=positions).logits.float()
    assert calls and calls[0]["cu_q"] == [0, 5, 14, 18] and calls[0]["max_q"] == 9
    assert (packed - alone).abs().max().item() <= 0.02 * alone.abs().max().item()
