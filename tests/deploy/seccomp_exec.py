"""Run a command under a Docker-format seccomp profile, as a container runtime would.

    python seccomp_exec.py PROFILE.json -- COMMAND [ARGS...]

Compiles the profile with libseccomp (through ctypes: no Python binding needed, only
the libseccomp2 shared library every systemd machine has), loads it into this
process, and execs COMMAND, which inherits the filter. The profile features handled
are the ones the project's profile uses (names, action, errnoRet, args with
EQ/NE/MASKED_EQ and the other comparisons); ``includes``/``excludes`` are refused
rather than ignored, so a profile using them cannot pass for what it is not.
Only the native architecture is loaded: the others cannot run here anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from typing import Any

__all__ = ["action_value", "load_profile", "main"]

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_LOG = 0x7FFC0000
_ERRNO = 0x00050000
OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
       "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def action_value(action: str, errno_ret: int) -> int:
    if action == "SCMP_ACT_ALLOW":
        return SCMP_ACT_ALLOW
    if action == "SCMP_ACT_ERRNO":
        return _ERRNO | (errno_ret & 0xFFFF)
    if action == "SCMP_ACT_KILL_PROCESS":
        return SCMP_ACT_KILL_PROCESS
    if action == "SCMP_ACT_LOG":
        return SCMP_ACT_LOG
    raise ValueError(f"unsupported action {action}")


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def load_profile(profile: dict[str, Any]) -> None:
    """Install ``profile`` as this process's seccomp filter (irreversible)."""
    lib = _library()
    default = action_value(profile["defaultAction"], profile.get("defaultErrnoRet", 1))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    for rule in profile["syscalls"]:
        if "includes" in rule or "excludes" in rule:
            raise ValueError(f"includes/excludes are not supported here: {rule['names']}")
        action = action_value(rule["action"], rule.get("errnoRet", 1))
        args = rule.get("args") or []
        cmps = (ArgCmp * max(1, len(args)))()
        for i, a in enumerate(args):
            op = OPS[a["op"]]
            cmps[i] = ArgCmp(a["index"], op, a["value"], a.get("valueTwo", 0))
        for name in rule["names"]:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a syscall on this architecture (Docker skips them too)
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        load_profile(json.load(f))
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
