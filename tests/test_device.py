"""The CPU naming speed figures rely on: what the hardware has and what oneDNN is allowed to use."""
import pytest

from tunefuse import device


@pytest.fixture
def fake_cpu(monkeypatch, tmp_path):
    def make(model: str, flags: str, cap: str | None = None):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags}\n\n")
        real_open = open

        def fake_open(path, *a, **k):
            return real_open(info, *a, **k) if path == "/proc/cpuinfo" else real_open(path, *a, **k)

        monkeypatch.setattr("builtins.open", fake_open)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        if cap:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        else:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        device.cpu_info.cache_clear()
        return device.cpu_info()

    yield make
    device.cpu_info.cache_clear()


def test_amx_cpu(fake_cpu):
    info = fake_cpu("Intel(R) Xeon(R) Platinum 8480+", "avx512f avx512_bf16 amx_bf16 amx_tile")
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["amx"] and info["avx512_bf16"]
    assert device.cpu_kind() == "intel-amx" and device.cpu_has_bf16()


def test_amx_capped_by_onednn_counts_as_avx512_bf16(fake_cpu):
    info = fake_cpu("Intel(R) Xeon(R) Processor", "avx512_bf16 amx_bf16", cap="AVX512_CORE_BF16")
    assert not info["amx"] and info["amx_in_hardware"] and info["isa_cap"] == "avx512_core_bf16"
    assert device.cpu_kind() == "intel-avx512bf16-capped" and device.cpu_has_bf16()


def test_epyc_and_old_cpu(fake_cpu):
    fake_cpu("AMD EPYC 9R14 96-Core Processor", "avx512f avx512_bf16")
    assert device.cpu_kind() == "amd-avx512bf16" and device.cpu_has_bf16()
    fake_cpu("AMD EPYC 7R13 Processor", "avx2 fma")
    assert device.cpu_kind() == "amd-fp32" and not device.cpu_has_bf16()
    assert device.resolve_precision("auto", device.pick_device("cpu")) == "fp32"


def test_auto_precision_follows_measured_matmul_speed(fake_cpu, monkeypatch):
    fake_cpu("Intel(R) Xeon(R) Processor", "avx512_bf16 amx_bf16")
    cpu = device.pick_device("cpu")
    for speedup, expected in ((3.6, "bf16"), (0.55, "fp32"), (1.1, "fp32")):  # AMX; oneDNN capped; too close
        monkeypatch.setattr(device, "cpu_bf16_speedup", lambda s=speedup: s)
        assert device.resolve_precision("auto", cpu) == expected
        assert device.resolve_precision("bf16", cpu) == "bf16"  # an explicit choice is kept


def test_bf16_speedup_is_measured_and_positive():
    s = device.cpu_bf16_speedup()
    assert s > 0 and device.cpu_bf16_speedup() == s  # measured once per process
