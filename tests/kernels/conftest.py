"""Fixtures of the kernel tests."""

import pytest


@pytest.fixture(params=[True, False], ids=["avx512", "portable"])
def cpp_path(request):
    """The C++ extension's AVX-512 paths (decode attention, decoder ops) on, where the CPU has
    AVX-512F, or off (the portable loops); on again afterwards."""
    from tte_fast import _C

    if not hasattr(_C, "set_avx512_enabled"):
        pytest.skip("the C++ extension predates its AVX-512 paths")
    _C.set_avx512_enabled(request.param)
    if request.param and not _C.avx512_enabled():
        _C.set_avx512_enabled(True)
        pytest.skip("this CPU has no AVX-512F")
    yield request.param
    _C.set_avx512_enabled(True)
