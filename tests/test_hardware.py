"""spectrain.hardware: what the CPU runs natively decides bf16 vs fp32 for training and serving."""

from spectrain import hardware


def test_bf16_is_native_only_with_amx_or_avx512_bf16(monkeypatch):
    for flags, native in [
        ({"avx2", "amx_bf16"}, True),
        ({"avx512f", "avx512_bf16"}, True),
        ({"avx2", "avx512f"}, False),
        (set(), False),
    ]:
        monkeypatch.setattr(hardware, "cpu", lambda flags=flags: ("test cpu", frozenset(flags)))
        assert hardware.cpu_runs_bf16() is native


def test_this_machines_cpu_is_read_from_proc_cpuinfo():
    model, flags = hardware.cpu()
    assert model and ("fpu" in flags or not flags)  # every x86 Linux lists fpu; elsewhere nothing is read
