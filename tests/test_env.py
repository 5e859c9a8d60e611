"""The environment fingerprint tells CPUs apart beyond their model name."""

from gpteval import env

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni avx512vl

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
"""


def test_cpu_identity_reads_family_model_and_isa_of_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = env.cpuinfo(path)
    assert info["model name"] == "AMD EPYC" and info["vendor_id"] == "AuthenticAMD"
    ident = env.cpu_identity(info)
    assert ident["cpu_id"] == "AuthenticAMD family 25 model 17 stepping 1"
    # in ISA_FLAGS order; avx512vl is not one of them, avx512_fp16 / amx are absent
    assert ident["cpu_isa"].startswith("avx2 avx512f avx512_vnni avx512_bf16 (torch kernels: ")


def test_no_cpuinfo_gives_no_identity(tmp_path):
    info = env.cpuinfo(tmp_path / "missing")
    assert info == {}
    assert env.cpu_identity(info)["cpu_id"] is None


def test_the_fingerprint_records_the_identity():
    fp = env.fingerprint()
    assert {"cpu", "cpu_id", "cpu_isa"} <= fp.keys()
