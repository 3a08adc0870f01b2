"""Decode attention over a slot cache: every backend against the float64 reference of the engine's
slot attention (gathered rows), fresh inputs each run; bad inputs raise."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_rel_close
from kernel_cases import CASES, poison_empty

from tte_fast import kernels
from tte_fast.runtime.slot_attention import ROWS, slot_attention_reference, visible_lengths
from tte_fast.runtime.slot_cache import SlotCache

# Inputs are rounded to the dtype first, so only the fp32 accumulation (fp32) or the output's
# rounding to the dtype (fp16 / bf16) separates a backend from the float64 reference.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2 * 2**-10, torch.bfloat16: 2 * 2**-7}
# The shared kernel backends, and the C++ extension's CPU kernel (float32 and bfloat16).
DECODE_CASES = [*CASES, ("cpp", "cpu")]
on_every_backend = pytest.mark.parametrize(
    "backend,device", DECODE_CASES, ids=[f"{b}-{d}" for b, d in DECODE_CASES]
)


def skip_unsupported(backend, dtype) -> None:
    if backend == "cpp" and dtype == torch.float16:
        pytest.skip("the C++ kernel takes float32 and bfloat16")


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = torch.seed()
    print(f"torch seed {seed}")


def slot_inputs(slots, heads, kv_heads, width, dim, dtype, device, busy, extra_columns=0):
    """Query of the busy slots, key/value views ``[S, H_kv, W, d]`` cut from a longer cache (when
    ``extra_columns``), lengths in [1, W] with 1 and W both present, and the engine's bias."""
    cache = 2 * torch.randn(2, slots, kv_heads, width + extra_columns, dim, dtype=torch.float64)
    cache = cache.to(device, dtype)
    key, value = cache[0, :, :, :width], cache[1, :, :, :width]
    lengths = torch.randint(1, width + 1, (slots,))
    lengths[torch.randperm(slots)[:2]] = torch.tensor([1, width])[: min(2, slots)]
    rows = torch.randperm(slots)[:busy].sort().values if busy < slots else None
    batch = busy if rows is not None else slots
    query = (2 * torch.randn(batch, heads, 1, dim, dtype=torch.float64)).to(device, dtype)
    columns = torch.arange(width)
    hidden = columns[None, :] >= lengths[:, None]  # as the slot cache's bias: the dtype's minimum
    bias = torch.zeros(slots, width, dtype=dtype).masked_fill_(hidden, torch.finfo(dtype).min)
    return query, key, value, lengths.to(device), rows, bias[:, None, None, :]


def reference(query, key, value, lengths, rows, bias, scaling=None):
    rows = torch.arange(key.shape[0]) if rows is None else rows
    return slot_attention_reference(query.cpu(), key.cpu(), value.cpu(), bias, rows, scaling)


@on_every_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "slots,heads,kv_heads,width,dim,busy,extra",
    [
        (1, 2, 2, 1, 8, 1, 0),  # one slot, one column, MHA
        (4, 4, 4, 17, 16, 4, 5),  # MHA, all slots, non-contiguous view
        (6, 4, 2, 130, 32, 3, 0),  # GQA, a busy subset, several column blocks
        (5, 6, 2, 65, 24, 2, 63),  # GQA (3 per group: padded), d not a power of two, view of a longer cache
        (3, 8, 1, 130, 16, 3, 0),  # one key head for all
    ],
)
def test_decode_attention_matches_reference(
    backend, device, dtype, slots, heads, kv_heads, width, dim, busy, extra
):
    skip_unsupported(backend, dtype)
    for _ in range(2):  # two fresh draws per case
        query, key, value, lengths, rows, bias = slot_inputs(
            slots, heads, kv_heads, width, dim, dtype, device, busy, extra
        )
        assert extra == 0 or not key.is_contiguous()
        out = kernels.decode_attention(
            query, key, value, lengths, rows=None if rows is None else rows.to(device), backend=backend
        )
        assert out.shape == (query.shape[0], 1, heads, dim) and out.dtype == dtype
        assert_rel_close(out, reference(query, key, value, lengths, rows, bias), TOLERANCE[dtype], "output")


@on_every_backend
def test_decode_attention_scaling_and_unwritten_output(backend, device, monkeypatch):
    """An explicit scaling is used, and every output element is written (``torch.empty`` poisoned)."""
    query, key, value, lengths, rows, bias = slot_inputs(4, 4, 2, 40, 16, torch.float32, device, 3)
    poison_empty(monkeypatch)
    out = kernels.decode_attention(
        query, key, value, lengths, rows=rows.to(device), scaling=0.7, backend=backend
    )
    monkeypatch.undo()
    assert_rel_close(out, reference(query, key, value, lengths, rows, bias, 0.7), 1e-5, "output")


@on_every_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_over_a_slot_cache_step(backend, device, dtype):
    """What the engine's slot attention runs on CUDA: a windowed step's key views, busy rows
    (``ROWS``) and the lengths read off the cache's bias (``visible_lengths``)."""
    slots, heads, kv_heads, dim, length = 5, 4, 2, 16, 400  # long enough for a window on CPU
    cache = SlotCache(1, slots, kv_heads, dim, length, dtype, device)
    cache.keys[0].copy_(torch.randn(cache.keys[0].shape))
    cache.values[0].copy_(torch.randn(cache.values[0].shape))
    positions = [0, 70, 3, 127, 190]  # slot 4 idle, past the step's width
    for slot, n in enumerate(positions):
        cache.positions[slot], cache.host_positions[slot] = n, n
    busy = [0, 1, 3]
    cache.select(busy, windowed=True)
    new = [torch.randn(len(busy), kv_heads, 1, dim).to(device, dtype) for _ in range(2)]
    keys, values = cache.update(*new, 0)
    assert keys.shape[2] == 128 and not keys.is_contiguous()
    bias = cache.attention_bias(dtype)
    lengths = visible_lengths(bias)
    assert lengths.tolist() == [1, 71, 4, 128, 128]
    query = torch.randn(len(busy), heads, 1, dim).to(device, dtype)
    rows = getattr(keys, ROWS)
    out = kernels.decode_attention(query, keys, values, lengths, rows, backend=backend)
    expected = slot_attention_reference(query.cpu(), keys.cpu(), values.cpu(), bias.cpu(), rows.cpu())
    assert_rel_close(out, expected, TOLERANCE[dtype], "output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "heads,kv_heads,dim,width",
    [
        (9, 3, 64, 200),  # SmolLM2-135M's heads; blocks of 32 columns and a short last one
        (12, 2, 128, 70),  # Qwen2-VL-2B's
        (4, 4, 48, 33),  # a head dim of 3 vectors (not unrolled), one column past a block
        (4, 2, 24, 40),  # not a multiple of 16: the portable loops either way
    ],
)
@pytest.mark.parametrize("bf16_dots", [True, False], ids=["bf16-dots", "widened"])
def test_cpp_kernel_paths_match_reference(cpp_path, bf16_dots, dtype, heads, kv_heads, dim, width):
    """Both C++ paths against the float64 reference at the decoders' head dims; the AVX-512 path
    takes exactly the (row, key head) tasks whose head dim is a multiple of 16 (its counter), its
    bfloat16 keys through the CPU's bfloat16 dot products (where it has them) or widened."""
    from tte_fast import _C

    if not bf16_dots and not (cpp_path and dtype == torch.bfloat16 and dim % 32 == 0):
        pytest.skip("the bfloat16 dot products do not apply: the same run as with them on")
    _C.set_avx512_bf16_enabled(bf16_dots)
    if bf16_dots and cpp_path and dtype == torch.bfloat16 and dim % 32 == 0 and not _C.avx512_bf16_enabled():
        _C.set_avx512_bf16_enabled(True)
        pytest.skip("this CPU has no AVX512_BF16")
    query, key, value, lengths, rows, bias = slot_inputs(7, heads, kv_heads, width, dim, dtype, "cpu", 5, 9)
    before = _C.avx512_attention_tasks()
    try:
        out = kernels.decode_attention(query, key, value, lengths, rows=rows, backend="cpp")
    finally:
        _C.set_avx512_bf16_enabled(True)
    ran = _C.avx512_attention_tasks() - before
    assert ran == (5 * kv_heads if cpp_path and dim % 16 == 0 else 0)
    assert_rel_close(out, reference(query, key, value, lengths, rows, bias), TOLERANCE[dtype], "output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotate", [True, False], ids=["rotary", "no-rotary"])
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (12, 2, 128), (4, 4, 48), (4, 2, 24)])
def test_step_attention_equals_rotary_cache_write_then_attention(
    cpp_path, dtype, rotate, heads, kv_heads, dim
):
    """The fused step (straight from the [q; k; v] rows) equals its three ops in turn: the rotary op,
    the key and value written at each row's column length - 1, the decode attention; bit for bit
    (the same arithmetic), cache included, and near the float64 reference."""
    from tte_fast.kernels.decode_attention_cpp import decode_attention_cpp, decode_step_attention_cpp
    from tte_fast.kernels.decoder_ops_cpp import rotary

    slots, width, rows = 7, 70, [5, 0, 3, 6]
    key, value = (torch.randn(slots, kv_heads, width, dim).to(dtype) for _ in range(2))
    lengths = torch.randint(1, width + 1, (len(rows),))
    lengths[:2] = torch.tensor([1, width])
    qkv = torch.randn(len(rows), (heads + 2 * kv_heads) * dim + 3).to(dtype)[:, :-3]  # strided rows
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    cos = sin = None
    if rotate:
        angles = torch.rand(len(rows), dim // 2) * 50
        cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
        q, k = rotary(q, cos, sin, heads), rotary(k, cos, sin, kv_heads)
    q, k, v = (t.reshape(len(rows), -1, 1, dim) for t in (q, k, v))
    want_key, want_value = key.clone(), value.clone()
    want_key[rows, :, lengths - 1] = k[:, :, 0]
    want_value[rows, :, lengths - 1] = v[:, :, 0]
    want = decode_attention_cpp(q, want_key, want_value, rows, lengths.tolist(), 0.125)
    got = decode_step_attention_cpp(qkv, cos, sin, heads, key, value, rows, lengths.tolist(), 0.125)
    assert torch.equal(key, want_key) and torch.equal(value, want_value), (
        "the step's column, written as the ops write it"
    )
    assert torch.equal(got, want)
    bias = torch.zeros(slots, width, dtype=dtype)
    bias[rows] = bias[rows].masked_fill(
        torch.arange(width)[None, :] >= lengths[:, None], torch.finfo(dtype).min
    )
    expected = slot_attention_reference(q, key, value, bias[:, None, None, :], torch.tensor(rows), 0.125)
    assert_rel_close(got, expected, TOLERANCE[dtype], "output")


def test_step_attention_checks_its_inputs():
    from tte_fast.kernels.decode_attention_cpp import decode_step_attention_cpp

    key = value = torch.zeros(2, 1, 4, 8)
    with pytest.raises(
        ValueError, match=r"qkv must be \[B, \(heads \+ 2 kv_heads\) \* head_dim\] = \[B, 32\]"
    ):
        decode_step_attention_cpp(torch.zeros(1, 30), None, None, 2, key, value, [0], [1], 1.0)
    with pytest.raises(ValueError, match="length 0 outside 1..4"):
        decode_step_attention_cpp(torch.zeros(1, 32), None, None, 2, key, value, [0], [0], 1.0)
    with pytest.raises(ValueError, match="cos and sin come together"):
        decode_step_attention_cpp(torch.zeros(1, 32), torch.zeros(1, 8), None, 2, key, value, [0], [1], 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        decode_step_attention_cpp(torch.zeros(1, 32).bfloat16(), None, None, 2, key, value, [0], [1], 1.0)


def test_step_attention_refuses_a_layer_it_did_not_check():
    """A step's attention checks its arguments once; a later layer's ``qkv`` or cache layer of another
    shape, strides or dtype is refused before the kernel reads it through raw pointers."""
    from tte_fast.kernels.decode_attention_cpp import StepAttention

    qkv, key, value = torch.randn(1, 32), torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    step = StepAttention(qkv, None, None, 2, key, value, [0], [1])
    assert step(qkv, key.clone(), value.clone(), 1.0).shape == (1, 1, 2, 8)
    for later in (
        (torch.randn(2, 32), key, value),  # more rows than the step's
        (qkv, torch.randn(2, 1, 2, 8), value),  # a narrower cache layer
        (qkv, key, torch.randn(2, 1, 8, 4).transpose(2, 3)),  # other strides
        (qkv, key, value.double()),
    ):
        with pytest.raises(ValueError, match="checked as"):
            step(*later, 1.0)


@pytest.mark.parametrize("threads", [2, 3])
def test_cpp_kernel_on_torchs_openmp_team_equals_one_thread(threads):
    """The default runs the tasks on the OpenMP team torch loaded (found in the process), with
    torch's thread count; an explicit count on the extension's own threads (what runs where no
    OpenMP runtime is found): each task's arithmetic is the same, so the outputs are bit-identical."""
    from tte_fast import _C
    from tte_fast.kernels.decode_attention_cpp import decode_attention_cpp

    if not _C.openmp_team_available():
        pytest.skip("no OpenMP runtime with GOMP entry points loaded (torch built without one)")
    query, key, value, lengths, rows, _ = slot_inputs(9, 8, 2, 70, 64, torch.bfloat16, "cpu", 7)
    rows, lengths = rows.tolist(), lengths[rows].tolist()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        team = decode_attention_cpp(query, key, value, rows, lengths, 0.125)
    finally:
        torch.set_num_threads(before)
    one = decode_attention_cpp(query, key, value, rows, lengths, 0.125, threads=1)
    assert torch.equal(team, one)
    assert torch.equal(decode_attention_cpp(query, key, value, rows, lengths, 0.125, threads=threads), one)


@pytest.mark.parametrize(
    "dtype, backend", [(torch.float32, "cpp"), (torch.bfloat16, "cpp"), (torch.float16, "torch")]
)
def test_decode_attention_auto_on_cpu(dtype, backend):
    """On CPU, auto runs the C++ kernel where it applies and the torch formula elsewhere."""
    query, key, value, lengths, _, bias = slot_inputs(2, 2, 1, 9, 8, dtype, "cpu", 2)
    out = kernels.decode_attention(query, key, value, lengths)
    assert torch.equal(out, kernels.decode_attention(query, key, value, lengths, backend=backend))
    if backend == "torch":
        with pytest.raises(ValueError, match="backend='cpp' takes CPU float32 / bfloat16"):
            kernels.decode_attention(query, key, value, lengths, backend="cpp")


def test_cpp_kernel_checks_rows_and_lengths_itself():
    """Rows and lengths that bypass the Python checks still raise in the extension, never read out
    of bounds; a zero-length row gives zeros, not NaN."""
    from tte_fast.kernels.decode_attention_cpp import decode_attention_cpp

    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    with pytest.raises(ValueError, match="row 0 names slot 2 of 2"):
        decode_attention_cpp(q, k, v, [2], [1], 1.0)
    with pytest.raises(ValueError, match=r"row 0 length 5 outside 0..4"):
        decode_attention_cpp(q, k, v, [1], [5], 1.0)
    with pytest.raises(ValueError, match="rows and lengths differ"):
        decode_attention_cpp(q, k, v, [1], [], 1.0)
    assert torch.equal(decode_attention_cpp(q, k, v, [0], [0], 1.0), torch.zeros(1, 1, 2, 8))


def _bad_cases():
    q, k, v, n = (
        torch.randn(2, 4, 1, 8),
        torch.randn(3, 2, 10, 8),
        torch.randn(3, 2, 10, 8),
        torch.tensor([1, 5, 10]),
    )
    rows = torch.tensor([0, 2])
    return [
        ((q, k, v, n), {}, r"query's B \(2\) must equal the number of slots S \(3\)"),
        ((q[:, :3], k, v, n), {"rows": rows}, r"query heads \(3\) must be a multiple of key heads \(2\)"),
        ((q[:, :, :, :4], k, v, n), {"rows": rows}, "query head_dim 4 does not match key's 8"),
        ((q.expand(2, 4, 2, 8), k, v, n), {"rows": rows}, r"one token per row.*\[2, 4, 2, 8\]"),
        ((q, k, v[:, :, :9], n), {"rows": rows}, r"value shape \[3, 2, 9, 8\] does not match"),
        (
            (q.half(), k, v, n),
            {"rows": rows},
            "key dtype torch.float32 does not match query dtype",
        ),
        ((q, k, v.double(), n), {"rows": rows}, "value dtype torch.float64"),
        ((q[0], k, v, n), {"rows": rows}, "query must have 4 dimensions"),
        ((q.long(), k, v, n), {"rows": rows}, "query must be a floating-point tensor"),
        ((q, k, v, n[:2]), {"rows": rows}, r"lengths must have shape \[3\], got \[2\]"),
        ((q, k, v, n.float()), {"rows": rows}, "lengths must be an integer tensor"),
        ((q, k, v, torch.tensor([1, 5, 11])), {"rows": rows}, r"lengths .* \[1, W=10\], found 11"),
        ((q, k, v, torch.tensor([1, 5, 0])), {"rows": rows}, r"lengths .* \[1, W=10\], found 0"),
        ((q, k, v, n), {"rows": torch.tensor([0, 3])}, r"rows must lie in \[0, S=3\), found 3"),
        ((q, k, v, n), {"rows": torch.tensor([-1, 2])}, "found -1"),
        ((q, k, v, n), {"rows": torch.tensor([0])}, r"rows must have shape \[2\]"),
        ((q, k, v, n), {"rows": rows, "scaling": float("nan")}, "scaling must be a finite number"),
        ((q, k, v, n), {"rows": rows, "backend": "cuda"}, "backend must be one of"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_decode_attention_bad_input(case):
    args, kwargs, match = _bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        kernels.decode_attention(*args, **kwargs)


def test_decode_attention_idle_slot_lengths_are_not_checked():
    """Only the busy rows' lengths must be in range: an idle slot may hold anything."""
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    out = kernels.decode_attention(q, k, v, torch.tensor([3, 0]), rows=torch.tensor([0]))
    assert out.shape == (1, 1, 2, 8) and torch.isfinite(out).all()
