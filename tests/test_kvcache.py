"""forward_with_kvcache's argument checks on CPU tensors (the device check comes last):
each bad argument raises TypeError or ValueError naming it."""

import pytest
import torch

import fa_cute


def _args(batch=2, nheads=4, nheads_k=2, d=128, capacity=256):
    q = torch.randn(batch, 1, nheads, d).to(torch.bfloat16)
    k_cache = torch.randn(batch, capacity, nheads_k, d).to(torch.bfloat16)
    v_cache = torch.randn(batch, capacity, nheads_k, d).to(torch.bfloat16)
    k = torch.randn(batch, 1, nheads_k, d).to(torch.bfloat16)
    v = torch.randn(batch, 1, nheads_k, d).to(torch.bfloat16)
    lens = torch.tensor([10, 20], dtype=torch.int32)
    return q, k_cache, v_cache, k, v, lens


def _raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fa_cute.forward_with_kvcache(*args, **kwargs)


def test_valid_call_reaches_the_device_check() -> None:
    q, kc, vc, k, v, lens = _args()
    _raises(ValueError, "CUDA tensors only", q, kc, vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "CUDA tensors only", q, kc, vc, cache_seqlens=lens)


def test_arguments() -> None:
    q, kc, vc, k, v, lens = _args()
    _raises(ValueError, "pass both", q, kc, vc, k, None, cache_seqlens=lens)
    _raises(TypeError, "cache_seqlens must have dtype torch.int32", q, kc, vc, k, v, cache_seqlens=lens.long())
    _raises(ValueError, "cache_seqlens must be a contiguous tensor of shape", q, kc, vc, k, v,
            cache_seqlens=lens[:1])
    _raises(ValueError, "v_cache must have k_cache's shape", q, kc, vc[:, :-1], k, v, cache_seqlens=lens)
    _raises(ValueError, "multiple of nheads", q[:, :, :3], kc, vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "k and v must be", q, kc, vc, k[:1], v[:1], cache_seqlens=lens)
    _raises(TypeError, "k_cache has dtype", q, kc.half(), vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "num_splits", q, kc, vc, k, v, cache_seqlens=lens, num_splits=-1)
    _raises(ValueError, "entries for a batch", q, kc[:1], vc[:1], k, v, cache_seqlens=lens)


def test_paged() -> None:
    q, _, _, k, v, lens = _args()
    pages = torch.randn(8, 24, 2, 128).to(torch.bfloat16)
    table = torch.zeros(2, 4, dtype=torch.int32)
    _raises(ValueError, "multiple of 16", q, pages, pages.clone(), k, v, cache_seqlens=lens, page_table=table)
    pages = torch.randn(8, 32, 2, 128).to(torch.bfloat16)
    _raises(ValueError, "at most one", q, pages, pages.clone(), k, v, cache_seqlens=lens, page_table=table,
            cache_batch_idx=torch.zeros(2, dtype=torch.int32))
    _raises(ValueError, "page_table must be", q, pages, pages.clone(), k, v, cache_seqlens=lens,
            page_table=table[:1])
    _raises(ValueError, "CUDA tensors only", q, pages, pages.clone(), k, v, cache_seqlens=lens, page_table=table)


def test_grad_refused() -> None:
    q, kc, vc, k, v, lens = _args()
    _raises(ValueError, "no backward", q.requires_grad_(), kc, vc, k, v, cache_seqlens=lens)


@pytest.fixture
def planned(fake_cuda, monkeypatch: pytest.MonkeyPatch) -> list:
    """forward_with_kvcache's plans on CPU tensors posing as CUDA ones (conftest's
    `fake_cuda`): each full check (`plan_call`) is recorded, the launch returns the plan."""
    from fa_cute import _cache, _kvcache

    monkeypatch.setattr(_cache, "KVCACHE_VALIDATED", {})
    monkeypatch.setattr(_kvcache, "check_devices", lambda *args, **kwargs: None)
    monkeypatch.setattr(_kvcache._C, "num_splits", lambda *args: 1, raising=False)
    plans = []
    plan = _kvcache.plan_call

    def counting(*args):
        plans.append(plan(*args))
        return plans[-1]

    monkeypatch.setattr(_kvcache, "plan_call", counting)
    monkeypatch.setattr(_kvcache, "launch_plan", lambda plan, *tensors: plan)
    return plans


def test_a_repeated_call_skips_the_checks(planned: list) -> None:
    q, kc, vc, k, v, lens = _args()
    first = fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    again = fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    assert len(planned) == 1 and again == first
    assert first.capacity == 256 and first.seqlen_new == 1 and first.packed
    fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens, return_lse=True)
    fa_cute.forward_with_kvcache(q, kc[:, :128], vc[:, :128], k, v, cache_seqlens=lens)
    fa_cute.forward_with_kvcache(q, kc, vc, cache_seqlens=lens)
    assert len(planned) == 4
    assert [p.return_lse for p in planned] == [False, True, False, False]
    assert planned[2].capacity == 128 and planned[3].seqlen_new == 0


def test_a_cached_call_still_refuses_what_changed(planned: list) -> None:
    q, kc, vc, k, v, lens = _args()
    fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    vc.untyped_storage().resize_(0)  # freed under a tensor of the cached shape (FSDP)
    _raises(ValueError, "v_cache reaches byte", q, kc, vc, k, v, cache_seqlens=lens)
    q, kc, vc, k, v, lens = _args()
    fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    q.requires_grad_()
    _raises(ValueError, "no backward", q, kc, vc, k, v, cache_seqlens=lens)
    with torch.no_grad():
        fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "num_splits", q.detach(), kc, vc, k, v, cache_seqlens=lens, num_splits=True)


def test_forget_tuning_drops_the_plans(planned: list) -> None:
    from fa_cute import _cache

    q, kc, vc, k, v, lens = _args()
    fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    _cache.forget_tuning()
    fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens)
    assert len(planned) == 2


def _recorded_launches(monkeypatch: pytest.MonkeyPatch) -> tuple:
    """`_C.kvcache_forward`'s parameter names (pybind11's docstring) and the list that each
    launch's arguments are appended to, by name, in place of the kernels; an empty
    `_cache.KVCACHE_VALIDATED`, device checks off, one split."""
    import re

    from fa_cute import _C, _cache, _kvcache

    names = re.findall(r"(?:\(|, )(\w+): ", _C.kvcache_forward.__doc__.splitlines()[0])
    calls = []
    monkeypatch.setattr(_cache, "KVCACHE_VALIDATED", {})
    monkeypatch.setattr(_kvcache, "check_devices", lambda *args, **kwargs: None)
    monkeypatch.setattr(_kvcache._C, "num_splits", lambda *args: 1, raising=False)
    monkeypatch.setattr(_kvcache._C, "kvcache_forward", lambda *args: calls.append(dict(zip(names, args))),
                        raising=False)
    monkeypatch.setattr(_kvcache, "current_stream", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    return names, calls


def test_launch_arguments_bind_to_the_c_signature(fake_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """launch_plan's arguments, strides taken from the plan, against `_C.kvcache_forward`'s
    signature (pybind11's docstring) and against what the tensors say: the cached plan
    carries out's, k's and v's strides so that a hit computes none of them."""
    from fa_cute import _cache

    names, calls = _recorded_launches(monkeypatch)
    q, kc, vc, _, _, lens = _args(nheads=4, nheads_k=4)  # not packed: out's own strides
    k = torch.randn(2, 3, 8, 128).to(torch.bfloat16)[:, :, ::2]  # strided new keys
    v = torch.randn(2, 3, 4, 128).to(torch.bfloat16)
    outs = [fa_cute.forward_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens) for _ in range(2)]
    assert len(_cache.KVCACHE_VALIDATED) == 1 and len(calls) == 2  # the second call a cache hit
    for out, args in zip(outs, calls):
        assert len(args) == len(names) and names[-3:] == ["num_splits", "o_accum", "lse_accum"]
        assert args["out"] == out.data_ptr() and args["k_new"] == k.data_ptr()
        assert args["seqlen_new"] == 3 and args["cache_seqlens"] == lens.data_ptr()
        assert args["q_strides"] == args["out_strides"] == (4 * 128, 0, 128)  # seqlen_q 1: stride 0
        assert args["k_new_strides"] == (3 * 8 * 128, 8 * 128, 2 * 128)
        assert args["v_new_strides"] == (3 * 4 * 128, 4 * 128, 128)
        assert args["k_cache_strides"] == args["v_cache_strides"] == (256 * 4 * 128, 4 * 128, 128)
    assert {n: a for n, a in calls[0].items() if n != "out"} == {n: a for n, a in calls[1].items() if n != "out"}


def test_every_launch_argument_of_a_paged_call(fake_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every argument of `_C.kvcache_forward`, by name and type, on a miss and on a hit, for a
    paged call whose sizes, strides and flags are pairwise distinct: two same-typed
    arguments swapped in `KvPlan.sizes` or in the launch fail here (the test above pins only
    the strides and a few values)."""
    from fa_cute import _cache

    _, calls = _recorded_launches(monkeypatch)
    bf16 = torch.bfloat16
    batch, seqlen_q, nheads, nheads_k, d, pages_per_seq, page_size, num_pages, seqlen_new = 3, 2, 6, 2, 128, 5, 32, 7, 4
    q = torch.randn(batch, seqlen_q, nheads + 2, d).to(bf16)[:, :, :nheads]  # q's strides are not out's
    k_cache = torch.randn(num_pages, page_size, nheads_k, d).to(bf16)
    v_cache = torch.randn(num_pages, page_size, nheads_k + 1, d).to(bf16)[:, :, :nheads_k]  # not k_cache's
    k = torch.randn(batch, seqlen_new, nheads_k, d).to(bf16)
    v = torch.randn(batch, seqlen_new, nheads_k + 3, d).to(bf16)[:, :, :nheads_k]
    lens = torch.tensor([1, 2, 3], dtype=torch.int32)
    table = torch.zeros(batch, pages_per_seq, dtype=torch.int32)
    kwargs = dict(cache_seqlens=lens, page_table=table, softmax_scale=0.3, softcap=5.0, window_size=(9, 1),
                  return_lse=True)
    results = [fa_cute.forward_with_kvcache(q, k_cache, v_cache, k, v, **kwargs) for _ in range(2)]
    assert len(_cache.KVCACHE_VALIDATED) == 1 and len(calls) == 2
    for (out, lse), args in zip(results, calls):
        expected = dict(
            config=args["config"], dtype="bf16", q=q.data_ptr(), k_cache=k_cache.data_ptr(),
            v_cache=v_cache.data_ptr(), out=out.data_ptr(), lse=lse.data_ptr(), k_new=k.data_ptr(),
            v_new=v.data_ptr(), cache_seqlens=lens.data_ptr(), kv_batch_idx=0, page_table=table.data_ptr(),
            batch=batch, seqlen_q=seqlen_q, seqlen_new=seqlen_new, capacity=pages_per_seq * page_size,
            nheads=nheads, nheads_k=nheads_k, head_dim=d, batch_k=num_pages, page_table_stride=pages_per_seq,
            page_size=page_size, num_pages=num_pages,
            q_strides=(seqlen_q * (nheads + 2) * d, (nheads + 2) * d, d),
            k_cache_strides=(page_size * nheads_k * d, nheads_k * d, d),
            v_cache_strides=(page_size * (nheads_k + 1) * d, (nheads_k + 1) * d, d),
            out_strides=(seqlen_q * nheads * d, nheads * d, d),
            k_new_strides=(seqlen_new * nheads_k * d, nheads_k * d, d),
            v_new_strides=(seqlen_new * (nheads_k + 3) * d, (nheads_k + 3) * d, d),
            softmax_scale=0.3, is_causal=False, softcap=5.0, window_left=9, window_right=1, device=None,
            stream=0, num_splits=1, o_accum=0, lse_accum=0)
        assert {n: (a, type(a)) for n, a in args.items()} == {n: (a, type(a)) for n, a in expected.items()}
