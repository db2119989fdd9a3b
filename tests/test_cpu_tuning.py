"""MKL_DEBUG_CPU_TYPE is set on AMD processors only, and never over the user's own value."""

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
