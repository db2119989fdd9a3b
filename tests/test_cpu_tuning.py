"""MKL_DEBUG_CPU_TYPE is set on AMD processors only, and never over the user's own value; glibc malloc keeps
freed memory unless the user tunes malloc."""

from paddlemix import _cpu_tuning


def test_sets_mkl_cpu_type_on_amd_only(monkeypatch):
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    monkeypatch.setattr(_cpu_tuning, "_cpu_vendor", lambda: "GenuineIntel")
    assert _cpu_tuning.tune_mkl_for_amd() is False
    assert "MKL_DEBUG_CPU_TYPE" not in _cpu_tuning.os.environ
    monkeypatch.setattr(_cpu_tuning, "_cpu_vendor", lambda: "AuthenticAMD")
    assert _cpu_tuning.tune_mkl_for_amd() is True
    assert _cpu_tuning.os.environ["MKL_DEBUG_CPU_TYPE"] == "5"


def test_keeps_the_users_value(monkeypatch):
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "2")
    monkeypatch.setattr(_cpu_tuning, "_cpu_vendor", lambda: "AuthenticAMD")
    assert _cpu_tuning.tune_mkl_for_amd() is False
    assert _cpu_tuning.os.environ["MKL_DEBUG_CPU_TYPE"] == "2"


def test_reads_the_vendor_of_this_machine():
    vendor = _cpu_tuning._cpu_vendor()
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        expected = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), None)
    assert vendor == expected


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_keep_freed_memory_raises_both_thresholds(monkeypatch):
    for var in ("PADDLEMIX_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_cpu_tuning, "_TUNED_LIBC", None)
    libc = FakeLibc()
    assert _cpu_tuning.keep_freed_memory(libc) is True
    assert sorted(libc.calls) == [(-3, 1 << 30), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    # this machine's glibc accepts the values (mallopt returns 1 for each)
    assert _cpu_tuning.keep_freed_memory() is (_cpu_tuning._glibc() is not None)


def test_keep_freed_memory_leaves_a_users_malloc_settings(monkeypatch):
    for var, value in (("PADDLEMIX_MALLOC_TUNING", "0"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
                       ("MALLOC_TRIM_THRESHOLD_", "0"), ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            libc = FakeLibc()
            assert _cpu_tuning.keep_freed_memory(libc) is False
            assert libc.calls == []


def test_checkpoint_loading_returns_freed_memory(monkeypatch):
    """While a block runs under returning_freed_memory, glibc's default thresholds apply; afterwards the raised ones."""
    for var in ("PADDLEMIX_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    libc = FakeLibc()
    monkeypatch.setattr(_cpu_tuning, "_TUNED_LIBC", None)
    assert _cpu_tuning.keep_freed_memory(libc) is True
    with _cpu_tuning.returning_freed_memory():
        inside = list(libc.calls[2:])
    assert sorted(inside) == [(-3, 128 * 1024), (-1, 128 * 1024)]
    assert sorted(libc.calls[4:]) == [(-3, 1 << 30), (-1, 1 << 30)]


def test_set_cpu_threads_sets_paddles_openmp_threads():
    import ctypes
    import os

    import paddle

    iomp = os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")
    omp = ctypes.CDLL(iomp) if os.path.isfile(iomp) else None
    try:
        assert _cpu_tuning.set_cpu_threads(2) == 2
        if omp is not None:  # the runtime our ops share with Paddle
            assert omp.omp_get_max_threads() == 2
        assert _cpu_tuning.set_cpu_threads() == len(os.sched_getaffinity(0))
    finally:
        _cpu_tuning.set_cpu_threads(1)
    for bad in (0, -1, 1.5, True):
        try:
            _cpu_tuning.set_cpu_threads(bad)
        except ValueError:
            continue
        raise AssertionError(f"set_cpu_threads({bad!r}) did not raise")
