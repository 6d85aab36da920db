"""Runs a command with Intel AMX denied, as on a CPU without it: `python noamx.py CMD [ARGS...]`.

Linux grants a process AMX's tile state only when it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)`); slb's runtime and ONNX Runtime's MLAS both ask before they use AMX and
fall back to their AVX-512 VNNI kernels when the request fails. This installs a seccomp filter
that makes exactly that request fail with EPERM (every other system call is allowed), then
executes the command, whose children inherit the filter. scripts/peer-bench.sh --no-amx runs
the whole benchmark under it, so that an AMX machine also measures the engines as they run on
AVX-512 CPUs without AMX (Cascade Lake, Ice Lake; VMs that hide it). Sets PEER_BENCH_AMX=denied
for the report.

Standard library only (ctypes), x86-64 Linux only; exits with 2 and a one-line message if the
filter cannot be installed.
"""

import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
AUDIT_ARCH_X86_64 = 0xC000003E
SYS_ARCH_PRCTL = 158
ARCH_REQ_XCOMP_PERM = 0x1023

# Classic BPF opcodes.
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

# Offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6] (args[0] low word at 16).
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16


def insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def program():
    return b"".join([
        insn(LD_W_ABS, 0, 0, OFF_ARCH),
        insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(LD_W_ABS, 0, 0, OFF_NR),
        insn(JEQ_K, 0, 3, SYS_ARCH_PRCTL),
        insn(LD_W_ABS, 0, 0, OFF_ARG0),
        insn(JEQ_K, 0, 1, ARCH_REQ_XCOMP_PERM),
        insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
        insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main():
    if len(sys.argv) < 2:
        print("usage: noamx.py CMD [ARGS...]", file=sys.stderr)
        return 2
    if os.uname().machine != "x86_64" or not sys.platform.startswith("linux"):
        print("noamx: AMX exists on x86-64 Linux only", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        print(f"noamx: cannot install the seccomp filter: {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 2
    os.environ["PEER_BENCH_AMX"] = "denied"
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as e:
        print(f"noamx: {sys.argv[1]}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
