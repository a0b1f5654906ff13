"""The host allocator policy for XLA:CPU (vidjax/host_malloc.py): freed step memory is reused without page faults."""

import json
import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from vidjax import cli, host_malloc
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


def test_configure_leaves_the_allocator_alone_once_jax_has_started(monkeypatch):
    jnp.ones(1).block_until_ready()  # this process's backend is up: its threads hold their arenas
    monkeypatch.setattr(host_malloc, "_state", "system (not configured)")
    monkeypatch.delenv(host_malloc.ENV, raising=False)
    monkeypatch.setattr(host_malloc.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called after the backend started"))
    assert host_malloc.configure() in ("system (jax's backend had started)", "system (not glibc Linux)")


@pytest.mark.parametrize("platforms, plugin, cpu_only", [
    ("", None, True), ("cpu", None, True), ("cpu", "xla_cuda12", True), ("", "xla_cuda12", False),
    ("cuda", None, False), ("cuda,cpu", None, False), ("tpu", "libtpu", False), ("", "libtpu", False),
])
def test_only_hosts_where_xla_cpu_runs_the_model_get_the_policy(platforms, plugin, cpu_only):
    assert host_malloc.runs_on_cpu_only(platforms, plugin) is cpu_only


def test_a_bad_setting_is_a_config_error_naming_the_variable_and_its_values(monkeypatch):
    monkeypatch.setenv(host_malloc.ENV, "jemalloc")
    with pytest.raises(ConfigError, match=r"\$VIDJAX_HOST_MALLOC='jemalloc' is not one of \('reuse', 'system'\)"):
        cli.configure_runtime(False)

