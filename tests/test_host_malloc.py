"""The host allocator policy for XLA:CPU (vidjax/host_malloc.py): freed step memory is reused without page faults."""

import json
import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from vidjax import cli, host_malloc
from vidjax import platform as vidjax_platform
from vidjax.config_lib import ConfigError

# In a fresh interpreter: configure, then malloc and touch 96 MiB twice, each time in a new thread (XLA:CPU's
# buffers are allocated on its worker threads), freeing it in between; print the state and the page faults the
# second allocation took.
_PROBE = r"""
import ctypes, json, resource, threading
from vidjax import host_malloc
state = host_malloc.configure()
libc = ctypes.CDLL("libc.so.6")
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, whatever the machine's transparent huge page setting
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 96 * 2**20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    thread = threading.Thread(target=touch)
    thread.start()
    thread.join()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": state, "faults": faults}))
"""


def _probe(**env) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_reuse_serves_a_freed_block_again_without_page_faults(monkeypatch):
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":  # the policy is glibc's: elsewhere it says so
        monkeypatch.setattr(host_malloc, "_state", "system (not configured)")
        monkeypatch.setenv(host_malloc.ENV, "reuse")
        assert host_malloc.configure() == "system (not glibc Linux)"
        return
    pages = 96 * 2**20 // 4096  # 24,576 pages of 4 KiB
    reuse = _probe(VIDJAX_HOST_MALLOC="reuse", JAX_PLATFORMS="cpu")
    assert reuse["state"] == "reuse"
    assert reuse["faults"][1] < pages // 10, reuse  # the second block is the first one's memory, already mapped
    system = _probe(VIDJAX_HOST_MALLOC="system", JAX_PLATFORMS="cpu")
    assert system["state"] == "system ($VIDJAX_HOST_MALLOC=system)"
    assert system["faults"][1] > pages // 2, system  # glibc's default: a fresh mapping, faulted in again


# In a fresh interpreter under a policy: 1,536 blocks of 64 KiB (below glibc's mmap threshold: the heap's) touched
# and freed, with a block allocated after them kept, so the freed 96 MiB is in the middle of the heap, which free()
# never gives back; then `release`.
_RELEASE_PROBE = r"""
import ctypes, json
from vidjax import host_malloc
state = host_malloc.configure()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
blocks = [libc.malloc(64 * 2**10) for _ in range(1536)]
for block in blocks:
    ctypes.memset(block, 1, 64 * 2**10)
kept = libc.malloc(4096)
before = host_malloc._resident_bytes()
for block in blocks:
    libc.free(block)
freed = before - host_malloc._resident_bytes()
print(json.dumps({"state": state, "freed": freed, "released": host_malloc.release()}))
"""


@pytest.mark.parametrize("policy", ["reuse", "system"])
def test_release_gives_the_heaps_freed_pages_back_under_either_policy(policy):
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":  # malloc_trim is glibc's: elsewhere None
        assert host_malloc.release() is None
        return
    proc = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VIDJAX_HOST_MALLOC": policy, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["freed"] < 32 * 2**20, found  # free() kept (most of) the 96 MiB resident
    assert found["released"] > 80 * 2**20, found  # release() gave it back


def test_configure_leaves_the_allocator_alone_once_jax_has_started(monkeypatch):
    jnp.ones(1).block_until_ready()  # this process's backend is up: its threads hold their arenas
    monkeypatch.setattr(host_malloc, "_state", "system (not configured)")
    monkeypatch.delenv(host_malloc.ENV, raising=False)
    monkeypatch.setattr(host_malloc.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called after the backend started"))
    assert host_malloc.configure() in ("system (jax's backend had started)", "system (not glibc Linux)")


@pytest.mark.parametrize("platforms, accelerator, cpu_only", [
    ("", None, True), ("cpu", None, True), ("cpu", "xla_cuda12", True), ("", "xla_cuda12", False),
    ("cuda", None, False), ("cuda,cpu", None, False), ("tpu", "libtpu", False), ("", "libtpu", False),
])
def test_only_hosts_where_xla_cpu_runs_the_model_get_the_policy(platforms, accelerator, cpu_only):
    assert vidjax_platform.host_allocator_applies(platforms, accelerator) is cpu_only


def _host(monkeypatch, tmp_path, google_devices: int = 0, other_devices: int = 1, device_files=()):
    """This process's view of a simulated host, through what the decision reads: PCI devices (`google_devices` of
    Google's vendor id, the TPU chips, and `other_devices` of another vendor's) and accelerator device files."""
    pci = tmp_path / f"pci{len(list(tmp_path.glob('pci*')))}"
    for index in range(google_devices + other_devices):
        device = pci / f"0000:00:{index + 4:02x}.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(("0x1ae0" if index < google_devices else "0x8086") + "\n")
    monkeypatch.setattr(vidjax_platform, "PCI_DEVICES", str(pci))
    files = []
    for name in device_files:
        (tmp_path / name).write_text("")
        files.append(str(tmp_path / name))
    monkeypatch.setattr(vidjax_platform, "NVIDIA_DEVICE_FILES", tuple(files))


def test_libtpu_installed_on_a_machine_without_chips_is_the_cpu_and_gets_the_policy(monkeypatch, tmp_path):
    # The README's test extra brings libtpu to every machine: jax then runs on the CPU, and the allocator applies.
    _host(monkeypatch, tmp_path, google_devices=0)
    assert vidjax_platform.accelerator_on_host("libtpu") is None
    assert host_malloc.runs_on_cpu_only("", "libtpu")
    monkeypatch.setattr(host_malloc, "_accelerator_plugin", lambda: "libtpu")
    assert _configure_before_jax(monkeypatch) == _where_glibc("reuse")


def test_a_machine_with_tpu_chips_keeps_the_system_allocator(monkeypatch, tmp_path):
    _host(monkeypatch, tmp_path, google_devices=4)
    assert vidjax_platform.tpu_chips(vidjax_platform.PCI_DEVICES) == 4
    assert vidjax_platform.accelerator_on_host("libtpu") == "libtpu"
    assert not host_malloc.runs_on_cpu_only("", "libtpu")
    assert host_malloc.runs_on_cpu_only("cpu", "libtpu")  # JAX_PLATFORMS=cpu on a TPU VM: XLA:CPU runs the model
    monkeypatch.setattr(host_malloc, "_accelerator_plugin", lambda: "libtpu")
    assert _configure_before_jax(monkeypatch) == _where_glibc("system (jax runs on libtpu)")


def test_a_cuda_plugin_counts_only_where_the_gpu_shows_its_device_files(monkeypatch, tmp_path):
    _host(monkeypatch, tmp_path)
    assert vidjax_platform.accelerator_on_host("xla_cuda12") is None
    _host(monkeypatch, tmp_path, device_files=("nvidiactl",))
    assert vidjax_platform.accelerator_on_host("xla_cuda12") == "xla_cuda12"
    assert vidjax_platform.accelerator_on_host("some_new_plugin") == "some_new_plugin"  # unknown: taken as present


def _configure_before_jax(monkeypatch) -> str:
    """`host_malloc.configure()` as a command calls it before jax starts its backend, with jax_platforms unset;
    mallopt is not called (this test process's allocator stays as it is), its answer taken as accepted."""
    from jax._src import xla_bridge

    monkeypatch.setattr(host_malloc, "_state", "system (not configured)")
    monkeypatch.delenv(host_malloc.ENV, raising=False)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(host_malloc, "_platforms", lambda: "")  # as on a machine where JAX_PLATFORMS is unset
    monkeypatch.setattr(host_malloc.ctypes, "CDLL", lambda *a: type("Libc", (), {"mallopt": lambda *a: 1})())
    return host_malloc.configure()


def _where_glibc(state: str) -> str:
    """`state` on glibc Linux, where the policy applies; what `configure` says on any other host."""
    return state if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else "system (not glibc Linux)"


def test_a_bad_setting_is_a_config_error_naming_the_variable_and_its_values(monkeypatch):
    monkeypatch.setenv(host_malloc.ENV, "jemalloc")
    with pytest.raises(ConfigError, match=r"\$VIDJAX_HOST_MALLOC='jemalloc' is not one of \('reuse', 'system'\)"):
        cli.configure_runtime(False)

