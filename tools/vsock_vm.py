#!/usr/bin/env python3
"""Run a command inside a small QEMU guest that has real AF_VSOCK (loopback, CID 1).

The vsock test tier of nitro-enclave-logs. CI-class machines have the AF_VSOCK family but no
``vsock_loopback`` transport, and their own vsock peers belong to the infrastructure: this
harness never opens an AF_VSOCK socket on the host. It boots a Debian kernel under QEMU (TCG by
default) with a read-only 9p root filesystem; inside the guest ``connect((1, port))`` reaches a
socket bound with ``bind((VMADDR_CID_ANY, port))``. The project directory is shared read-write
and the host's Python install (the one the project's ``.venv`` points to) read-only, both at the
same absolute paths as on the host, so ``<project>/.venv/bin/python`` runs unchanged in the guest.

Recipe: the project's shared reference vsock-vm.md (measured on a CI-class machine).

Usage (stdlib only, run with any Python >= 3.9)::

    python3 tools/vsock_vm.py check [--project DIR]
    python3 tools/vsock_vm.py build [--force] [--mirror URL] [--project DIR]
    python3 tools/vsock_vm.py run [--timeout S] [--memory MB] [--kvm] [--env KEY[=VAL]]...
                                  [--project DIR] [-v] -- CMD [ARG...]

Environment: ``NEL_VSOCK_CACHE`` sets the cache directory (default
/var/cache/nitro-enclave-logs-vsock-vm; keep it outside the repository).

Exit statuses:

``build``
    0 the image is built and current; 1 it could not be built (the message says why).
``check``
    0 the tier can run here (the image is ready, or ``build`` can make it: root and apt);
    1 it cannot (the message says what to install or do).
``run``
    The guest command's own exit status (0-255), except:
    124  the timeout expired; QEMU was killed.
    125  no exit status came back from the guest: the image is missing or out of date, QEMU
         failed to start, the kernel panicked, the guest init failed, or the command could not
         be started in the project directory. The console output above says which.
    130  interrupted (Ctrl-C); QEMU was killed.
    A guest command that itself exits 124 or 125 is indistinguishable from these.
All subcommands: 2 for a command-line usage error.

In the guest the command runs as root in the project directory, with stdin from /dev/null,
an environment of only: PATH (the venv's bin first), HOME=/tmp, TMPDIR=/tmp, LANG=C.UTF-8,
PYTHONDONTWRITEBYTECODE=1, PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, VIRTUAL_ENV, NEL_VSOCK_GUEST=1,
plus ``--env`` settings. /tmp, /run and /dev/shm are tmpfs; the rest of the root is read-only.
Read-only shares (the root's /usr, the Python install, the project's .venv) are mounted with
the guest page cache on (9p cache=loose), so a process start does not re-read its binary and
libraries through 9p; the read-write project share is uncached.
The loopback network interface is up; there is no other network.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

# Bump when the build recipe changes in a way the keys below do not capture: forces a rebuild.
RECIPE_VERSION = 1

DEFAULT_CACHE = "/var/cache/nitro-enclave-logs-vsock-vm"
DEFAULT_PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_SUITE = "bookworm"

# Kernel modules, in load order (reference recipe). Built-in ones are skipped.
MODULES = (
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vsock_loopback",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
)
ROOTFS_PACKAGES = ("python3", "python3-msgpack", "socat")

# Host tool -> Debian package providing it.
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "debootstrap": "debootstrap",
    "cpio": "cpio",
    "socat": "socat",
}

NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=262144"
MARKER = "vsock-vm: guest command exited with status"
KERNEL_APPEND = "console=ttyS0 quiet panic=-1"

EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
EXIT_INTERRUPTED = 130

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

Share = tuple[str, Path, Path, bool]  # 9p mount tag, host path, guest path, read-only

# 9p options of the shares the init mounts from the "mounts" file. Read-only shares are
# cached in the guest (cache=loose): nothing changes them while the guest runs (a build
# waits for the cache lock), and without a page cache every process start re-reads its
# binary and shared libraries through 9p page by page; under TCG that made a bare
# `python -c pass` take 3-4 s instead of under 1 s. Read-write shares stay uncached, so
# what the guest writes reaches the host at once.
RO_SHARE_OPTS = "ro,cache=loose"
RW_SHARE_OPTS = "rw"

# The guest's PID 1 (busybox sh). Static: per-run settings come from files in the results share.
INIT_SCRIPT = r"""#!/bin/sh
# nitro-enclave-logs vsock test VM init, written by tools/vsock_vm.py. Quiet on purpose: the
# console carries only the command's output and the final status line.
export PATH=/bin
O=@NINEP_OPTS@
die() {
    echo "vsock-vm: guest init failed: $*"
    poweroff -f
    sleep 5
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stty -F /dev/console -onlcr 2>/dev/null
while read -r m; do
    insmod "/lib/modules/$m.ko" || die "insmod $m failed"
done < /lib/modules/load-order
mount -t 9p -o "$O" results /results || die "cannot mount the results share"
R=/newroot
mount -t 9p -o "$O,ro" rootfs $R || die "cannot mount the root filesystem share"
mount -t proc proc $R/proc || die "cannot mount /proc"
mount -t sysfs sysfs $R/sys || die "cannot mount /sys"
mount -t devtmpfs devtmpfs $R/dev || die "cannot mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || die "cannot mount /tmp"
mount -t tmpfs -o mode=755 tmpfs $R/run || die "cannot mount /run"
while read -r tag mode path; do
    mkdir -p "$R$path" 2>/dev/null
    mount -t 9p -o "$O,$mode" "$tag" "$R$path" || die "cannot mount share $tag on $path"
done < /results/mounts
mkdir -p $R/run/vsock-vm && mount -o bind /results $R/run/vsock-vm || die "cannot bind /results"
ifconfig lo 127.0.0.1 up
hostname vsock-vm
chroot $R /usr/bin/env -i /bin/sh /run/vsock-vm/job.sh
s=$?
echo "$s" > /results/status
sync
echo "@MARKER@ $s"
echo 0 > /proc/sys/kernel/printk
poweroff -f
sleep 5
""".replace("@NINEP_OPTS@", NINEP_OPTS).replace("@MARKER@", MARKER)


class HarnessError(Exception):
    """A failure the harness reports as one clear message, without a traceback."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- small helpers


def info(message: str) -> None:
    """Print a harness message on stderr (the guest console owns stdout)."""
    print(f"vsock-vm: {message}", file=sys.stderr, flush=True)


def which(name: str) -> str | None:
    """Find an executable on PATH or in the sbin directories (debootstrap lives there)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=path)


def is_root() -> bool:
    """Whether we run as root (debootstrap and apt-get need it)."""
    return os.geteuid() == 0


def run_cmd(
    argv: list[str], *, log: Path | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run a host command, echoing it first; raise HarnessError if it fails.

    With ``log`` the command's output goes to that file, and its tail is shown on failure.
    """
    shown = shlex.join(argv) + (f"  (log: {log})" if log else "")
    info(f"+ {shown}")
    try:
        if log is None:
            proc = subprocess.run(argv, **kwargs)
        else:
            with open(log, "wb") as out:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    except FileNotFoundError as exc:
        raise HarnessError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = ""
        if log is not None and log.exists():
            lines = log.read_text(errors="replace").splitlines()[-25:]
            tail = "\n" + "\n".join("    " + line for line in lines)
        raise HarnessError(f"command failed with status {proc.returncode}: {shown}{tail}")
    return proc


def is_static_elf(path: str) -> bool:
    """Whether ``path`` is a 64-bit ELF executable without a program interpreter (static)."""
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            if len(hdr) < 64 or hdr[:4] != b"\x7fELF" or hdr[4] != 2:
                return False
            (phoff,) = struct.unpack_from("<Q", hdr, 32)
            phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
            f.seek(phoff)
            for _ in range(phnum):
                (p_type,) = struct.unpack_from("<I", f.read(phentsize))
                if p_type == 3:  # PT_INTERP
                    return False
    except (OSError, struct.error):
        return False
    return True


def tool_status(tool: str) -> str | None:
    """Return the path of a host tool if usable, else None (busybox must be the static one)."""
    path = which(tool)
    if tool == "busybox" and path and not is_static_elf(os.path.realpath(path)):
        return None
    return path


def dir_size(path: Path) -> int:
    """Total size in bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def digest(*parts: object) -> str:
    """A short stable hash of the parts, used as a cache key."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- cache and keys


def cache_dir() -> Path:
    """The image cache directory: $NEL_VSOCK_CACHE or the default under /var/cache."""
    return Path(os.environ.get("NEL_VSOCK_CACHE") or DEFAULT_CACHE).absolute()


def kernel_key() -> str:
    """Cache key of the kernel + modules step."""
    return digest("kernel", RECIPE_VERSION, MODULES)


def rootfs_key(suite: str) -> str:
    """Cache key of the debootstrap root filesystem."""
    return digest("rootfs", RECIPE_VERSION, suite, ROOTFS_PACKAGES)


def initramfs_key(kkey: str) -> str:
    """Cache key of the initramfs: the init script and the kernel it carries modules for."""
    return digest("initramfs", RECIPE_VERSION, INIT_SCRIPT, kkey)


def load_stamp(cache: Path) -> dict[str, Any]:
    """Read the cache's stamp file (what was built, with which keys); {} if there is none."""
    try:
        stamp = json.loads((cache / "stamp.json").read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def save_stamp(cache: Path, stamp: dict[str, Any]) -> None:
    """Write the stamp file atomically."""
    tmp = cache / "stamp.json.tmp"
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cache / "stamp.json")


def image_state(cache: Path) -> tuple[bool, str]:
    """Whether the cached image is complete and built by the current recipe, and why not."""
    stamp = load_stamp(cache)
    if not stamp:
        return False, f"no image in {cache}"
    suite = stamp.get("rootfs", {}).get("suite", DEFAULT_SUITE)
    kkey = kernel_key()
    wanted = {"kernel": kkey, "rootfs": rootfs_key(suite), "initramfs": initramfs_key(kkey)}
    for part, key in wanted.items():
        if stamp.get(part, {}).get("key") != key:
            return False, f"the {part} in {cache} is missing or was built by another recipe"
    for rel in ("kernel/vmlinux", "initramfs.cpio.gz", "rootfs/usr/bin/env"):
        if not (cache / rel).exists():
            return False, f"{cache / rel} is missing"
    return True, f"image in {cache} is current"


class CacheLock:
    """An flock on the cache: exclusive while building, shared while a guest runs."""

    def __init__(self, cache: Path, exclusive: bool) -> None:
        self.path = cache / ".lock"
        self.exclusive = exclusive
        self.fd = -1

    def __enter__(self) -> CacheLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            # A read-only cache (non-root user running a root-built image): lock read-only.
            self.fd = os.open(self.path, os.O_RDONLY)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            info("waiting for another build or run to release the cache lock")
            fcntl.flock(self.fd, mode)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# --------------------------------------------------------------------------- host side facts


def host_codename() -> str:
    """The host's Debian codename (the guest uses the same release), default bookworm."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or DEFAULT_SUITE
    except OSError:
        pass
    return DEFAULT_SUITE


def apt_mirror(suite: str) -> str:
    """The Debian mirror the machine's apt sources name for ``suite`` (deb822 or one-line)."""
    candidates: list[str] = []
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        try:
            text = src.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                candidates += fields.get("uris", "").split()
    lists = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for src in lists:
        try:
            lines = src.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                candidates.append(words[1])
    for uri in candidates:
        if re.match(r"(https?|file)://", uri):
            return uri
    raise HarnessError(
        f"no Debian mirror for '{suite}' in /etc/apt/sources.list(.d): pass --mirror URL"
    )


def venv_python_prefix(project: Path) -> tuple[Path | None, Path | None]:
    """The project's venv and the Python install its interpreter resolves to (None if absent)."""
    venv = project / ".venv"
    python = venv / "bin" / "python"
    if not os.path.lexists(python):
        return None, None
    real = Path(os.path.realpath(python))
    return venv, real.parent.parent


def check_share_path(path: Path, what: str) -> None:
    """Refuse paths QEMU's -virtfs option or the guest init cannot carry."""
    text = str(path)
    if "," in text:
        raise HarnessError(
            f"{what} {text} contains a comma, which breaks QEMU's -virtfs option parsing: "
            "move the checkout (or reach it through a symlink) to a path without commas",
            EXIT_NO_STATUS,
        )
    if "\n" in text or not path.is_absolute():
        raise HarnessError(f"{what} {text!r} must be an absolute path without newlines")
    if text == "/" or text.split("/")[1] in ("proc", "sys", "dev"):
        raise HarnessError(f"{what} {text} cannot be shared into the guest at the same path")
    try:
        os.stat(path)
        readable = os.access(path, os.R_OK | os.X_OK)
    except FileNotFoundError:
        readable = True  # e.g. the cache before `build`: not a permission problem
    except OSError:
        readable = False
    if not readable:
        raise HarnessError(
            f"{what} {text} is not readable by this user, so QEMU cannot share it: "
            "run as its owner (or root)"
        )


# --------------------------------------------------------------------------- build steps


def ensure_host_tools() -> None:
    """Install the host packages for missing tools with apt-get (needs root)."""
    missing = [tool for tool in HOST_TOOLS if tool_status(tool) is None]
    if not missing:
        return
    packages = sorted({HOST_TOOLS[tool] for tool in missing})
    if not is_root():
        raise HarnessError(
            f"missing host tools {', '.join(missing)}: as root run "
            f"apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)}"
        )
    info(f"missing host tools {', '.join(missing)}: installing {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_cmd(["apt-get", "update"], env=env)
    run_cmd(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env)
    still = [tool for tool in HOST_TOOLS if tool_status(tool) is None]
    if still:
        raise HarnessError(f"still missing after apt-get install: {', '.join(still)}")


def kernel_package() -> str:
    """The versioned kernel package linux-image-amd64 depends on (runs apt-get update if needed)."""
    for attempt in range(2):
        proc = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
        )
        found = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", proc.stdout, re.M)
        if found:
            return str(found[0])
        if attempt == 0:
            info("apt-cache does not know linux-image-amd64: updating the package lists")
            run_cmd(["apt-get", "update"])
    raise HarnessError("apt-cache depends linux-image-amd64 names no linux-image-* package")


def extract_vmlinux(vmlinuz: bytes) -> bytes:
    """Decompress a bzImage's xz payload to the ELF vmlinux QEMU boots through PVH."""
    magic = b"\xfd7zXZ\x00"
    pos = vmlinuz.find(magic)
    while pos >= 0:
        try:
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(vmlinuz[pos:])
        except lzma.LZMAError:
            out = b""
        if out[:4] == b"\x7fELF":
            return out
        pos = vmlinuz.find(magic, pos + 1)
    raise HarnessError("no xz-compressed ELF kernel found in the vmlinuz (not an xz kernel?)")


def module_depends(ko: bytes) -> list[str]:
    """The modules a .ko depends on, from the depends= entry of its ELF .modinfo section.

    (modules.dep is generated by depmod at install time, so the package does not ship it.)
    """
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise HarnessError("a kernel module is not a 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", ko, base)
        offset, size = struct.unpack_from("<QQ", ko, base + 24)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = ko.index(b"\0", str_off + name)
        if ko[str_off + name : end] == b".modinfo":
            for entry in ko[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[8:].decode().split(",") if d]
            return []
    return []


def module_name(path: str) -> str:
    """Kernel module name of a .ko path (dashes and underscores are the same to the kernel)."""
    base = os.path.basename(path)
    return base.split(".ko")[0].replace("-", "_")


def build_kernel(cache: Path) -> dict[str, Any]:
    """Fetch the kernel package, write kernel/vmlinux and kernel/modules/ in load order."""
    package = kernel_package()
    work = Path(tempfile.mkdtemp(prefix="kernel.", dir=cache))
    try:
        download = ["apt-get", "-o", "APT::Sandbox::User=root", "download", package]
        try:
            run_cmd(download, cwd=work, stdout=subprocess.DEVNULL)
        except HarnessError:
            info("download failed: updating the package lists and retrying once")
            run_cmd(["apt-get", "update"])
            run_cmd(download, cwd=work, stdout=subprocess.DEVNULL)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise HarnessError(f"apt-get download {package} left {len(debs)} .deb files")
        tree = work / "tree"
        run_cmd(["dpkg-deb", "-x", str(debs[0]), str(tree)])
        vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise HarnessError(f"{package} has no boot/vmlinuz-*")
        version = vmlinuz[0].name[len("vmlinuz-") :]
        moddir = next(
            (
                p
                for p in (tree / "lib/modules" / version, tree / "usr/lib/modules" / version)
                if p.is_dir()
            ),
            None,
        )
        if moddir is None:
            raise HarnessError(f"{package} has no lib/modules/{version}")
        try:
            builtin_list = (moddir / "modules.builtin").read_text().splitlines()
        except OSError:
            raise HarnessError(
                f"{package} has no modules.builtin: cannot tell built-in modules"
            ) from None
        builtin = {module_name(line.strip()) for line in builtin_list if line.strip()}
        files = {module_name(str(p)): p for p in moddir.rglob("*.ko*")}

        out = work / "out"
        (out / "modules").mkdir(parents=True)
        order: list[str] = []
        skipped: list[str] = []
        for name in MODULES:
            if name in builtin:
                skipped.append(name)
                continue
            src = files.get(name)
            if src is None:
                raise HarnessError(
                    f"kernel {version}: module {name} is neither built in nor in the package"
                )
            data = src.read_bytes()
            if src.name.endswith(".ko.xz"):
                data = lzma.decompress(data)
            elif src.name.endswith(".ko.gz"):
                data = gzip.decompress(data)
            elif not src.name.endswith(".ko"):
                raise HarnessError(f"kernel {version}: cannot decompress {src.name}")
            deps = module_depends(data)
            missing_deps = [d for d in deps if d not in order and d not in builtin]
            if missing_deps:
                raise HarnessError(
                    f"kernel {version}: module {name} needs {', '.join(missing_deps)}, "
                    "which the load order does not load before it"
                )
            (out / "modules" / f"{name}.ko").write_bytes(data)
            order.append(name)
        (out / "modules" / "load-order").write_text("".join(f"{m}\n" for m in order))
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz[0].read_bytes()))
        info(
            f"kernel {version}: modules {' '.join(order)}"
            + (f" (built in: {' '.join(skipped)})" if skipped else "")
        )
        target = cache / "kernel"
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
        return {
            "key": kernel_key(),
            "package": package,
            "version": version,
            "modules": order,
            "builtin": skipped,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    found = []
    prefix = str(path).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        point = line.split()[4]
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        if point == str(path) or point.startswith(prefix):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a directory tree, first unmounting anything an interrupted debootstrap left there."""
    if not path.exists():
        return
    for point in mounts_under(path):
        run_cmd(["umount", "-l", point])
    if mounts_under(path):
        raise HarnessError(f"{path} still has mounts below it; not deleting it")
    shutil.rmtree(path)


def build_rootfs(cache: Path, suite: str, mirror: str) -> dict[str, Any]:
    """debootstrap the guest's root filesystem into cache/rootfs."""
    new = cache / "rootfs.new"
    remove_tree(new)
    (cache / "logs").mkdir(exist_ok=True)
    run_cmd(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(ROOTFS_PACKAGES),
            suite,
            str(new),
            mirror,
        ],
        log=cache / "logs" / "debootstrap.log",
    )
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (new / sub).glob("*"):
            if entry.is_file() and entry.name not in ("lock",):
                entry.unlink()
    remove_tree(cache / "rootfs")
    os.replace(new, cache / "rootfs")
    return {"key": rootfs_key(suite), "suite": suite, "mirror": mirror}


def resolve_in_root(root: Path, path: str) -> Path | None:
    """Resolve ``path`` as the guest would inside ``root`` (absolute symlinks stay inside)."""
    parts = [p for p in path.split("/") if p]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = root
            continue
        if not candidate.exists():
            return None
        current = candidate
    return current


def check_python_libs(rootfs: Path, project: Path) -> None:
    """Check the shared libraries the venv's Python needs (ldd) exist in the guest rootfs.

    Missing libraries of the interpreter, libpython or the venv's extension modules are fatal;
    missing ones of optional stdlib modules (e.g. _tkinter) are reported.
    """
    venv, prefix = venv_python_prefix(project)
    if venv is None or prefix is None:
        info(f"no {project}/.venv: the guest will only have Debian's python3")
        return
    if not which("ldd"):
        info("no ldd on the host: not checking the guest has Python's shared libraries")
        return
    core = [str(prefix / "bin" / os.path.basename(os.path.realpath(venv / "bin" / "python")))]
    core += [str(p) for p in (prefix / "lib").glob("libpython*.so*")]
    core += [str(p) for p in venv.rglob("*.so")]
    optional = [str(p) for p in prefix.glob("lib/python3*/lib-dynload/*.so")]
    fatal: dict[str, list[str]] = {}  # ELF file name -> missing libraries
    warn: dict[str, list[str]] = {}
    for group, files in ((fatal, core), (warn, optional)):
        for elf in files:
            proc = subprocess.run(["ldd", elf], capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                m = re.match(r"\s*(\S+) => (/\S+)", line)
                if not m or m.group(2).startswith((str(prefix) + "/", str(venv) + "/")):
                    continue
                if resolve_in_root(rootfs, m.group(2)) is None:
                    group.setdefault(os.path.basename(elf).split(".")[0], []).append(m.group(1))
    if warn:
        lst = ", ".join(
            f"{mod} (needs {libs[0]}{' and more' if len(libs) > 1 else ''})"
            for mod, libs in sorted(warn.items())
        )
        info(f"note: these stdlib modules will not import in the guest: {lst}")
    if fatal:
        lst = "; ".join(f"{elf} needs {', '.join(libs)}" for elf, libs in sorted(fatal.items()))
        raise HarnessError(
            f"the guest rootfs lacks libraries the venv's Python needs: {lst}. The host and the "
            "guest should be the same Debian release; add the packages to ROOTFS_PACKAGES."
        )
    info(f"the guest rootfs has the shared libraries {prefix}/bin/python needs")


def ensure_mountpoint(rootfs: Path, path: Path) -> None:
    """Create ``path`` as an (empty) mount point directory inside the read-only-shared rootfs."""
    current = rootfs
    for part in path.parts[1:]:
        current = current / part
        if os.path.islink(current):
            raise HarnessError(
                f"cannot mount {path} in the guest: {current} is a symlink in its root filesystem"
            )
        if not os.path.isdir(current):
            try:
                current.mkdir()
            except OSError as exc:
                raise HarnessError(
                    f"cannot create the mount point {current}: {exc.strerror}; run "
                    f"`sudo python3 tools/vsock_vm.py build --project {path}` once",
                    EXIT_NO_STATUS,
                ) from None


def build_initramfs(cache: Path) -> dict[str, Any]:
    """Pack static busybox, the modules and /init into initramfs.cpio.gz (cpio newc, gzip -1)."""
    busybox = tool_status("busybox")
    if busybox is None:
        raise HarnessError("no static busybox: apt-get install busybox-static")
    stage = Path(tempfile.mkdtemp(prefix="initramfs.", dir=cache))
    try:
        for d in ("bin", "dev", "proc", "sys", "results", "newroot", "lib/modules"):
            (stage / d).mkdir(parents=True)
        shutil.copy2(os.path.realpath(busybox), stage / "bin" / "busybox")
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                (stage / "bin" / applet).symlink_to("busybox")
        for src in (cache / "kernel" / "modules").iterdir():
            shutil.copy2(src, stage / "lib" / "modules" / src.name)
        (stage / "init").write_text(INIT_SCRIPT)
        (stage / "init").chmod(0o755)
        os.mknod(stage / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
        names = sorted(
            str(Path(root, n).relative_to(stage))
            for root, dirs, files in os.walk(stage)
            for n in dirs + files
        )
        archive = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=stage,
            input=("\n".join(names) + "\n").encode(),
            capture_output=True,
        )
        if archive.returncode != 0:
            raise HarnessError(f"cpio failed: {archive.stderr.decode(errors='replace')}")
        tmp = cache / "initramfs.cpio.gz.tmp"
        with gzip.open(tmp, "wb", compresslevel=1) as out:
            out.write(archive.stdout)
        os.replace(tmp, cache / "initramfs.cpio.gz")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"key": initramfs_key(kernel_key())}


# --------------------------------------------------------------------------- subcommands


def cmd_build(args: argparse.Namespace) -> int:
    """Build (or bring up to date) the cached guest image: kernel, rootfs, initramfs."""
    if not is_root():
        raise HarnessError(
            "build needs root (apt-get, debootstrap, device nodes): "
            "run `sudo python3 tools/vsock_vm.py build`"
        )
    started = time.monotonic()
    ensure_host_tools()
    cache = cache_dir()
    if "," in str(cache):
        raise HarnessError(f"cache dir {cache} has a comma (breaks -virtfs): set NEL_VSOCK_CACHE")
    if cache.resolve().is_relative_to(DEFAULT_PROJECT):
        raise HarnessError(f"cache dir {cache} is inside the repository: set NEL_VSOCK_CACHE")
    cache.mkdir(parents=True, exist_ok=True)
    suite = host_codename()
    with CacheLock(cache, exclusive=True):
        stamp = {} if args.force else load_stamp(cache)
        stamp["recipe"] = RECIPE_VERSION

        step = time.monotonic()
        kernel_ok = stamp.get("kernel", {}).get("key") == kernel_key()
        if not kernel_ok or not (cache / "kernel/vmlinux").exists():
            stamp.pop("initramfs", None)
            stamp["kernel"] = build_kernel(cache)
            save_stamp(cache, stamp)
            info(f"kernel ready in {time.monotonic() - step:.1f} s")
        else:
            info(f"kernel {stamp['kernel'].get('version')}: cached")

        step = time.monotonic()
        if (
            stamp.get("rootfs", {}).get("key") != rootfs_key(suite)
            or not (cache / "rootfs/usr/bin/env").exists()
        ):
            mirror = args.mirror or apt_mirror(suite)
            stamp.pop("rootfs", None)
            save_stamp(cache, stamp)
            stamp["rootfs"] = build_rootfs(cache, suite, mirror)
            save_stamp(cache, stamp)
            info(f"rootfs ({suite}) ready in {time.monotonic() - step:.1f} s")
        else:
            info(f"rootfs ({stamp['rootfs'].get('suite')}): cached")

        rootfs = cache / "rootfs"
        project = Path(os.path.abspath(args.project))
        _venv, prefix = venv_python_prefix(project)
        checked = stamp["rootfs"].setdefault("python_checked", [])
        if str(prefix) not in checked:
            check_python_libs(rootfs, project)
            checked.append(str(prefix))
            save_stamp(cache, stamp)
        for path in guest_share_paths(project):
            ensure_mountpoint(rootfs, path)

        step = time.monotonic()
        if (
            stamp.get("initramfs", {}).get("key") != initramfs_key(kernel_key())
            or not (cache / "initramfs.cpio.gz").exists()
        ):
            stamp["initramfs"] = build_initramfs(cache)
            stamp["built"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            save_stamp(cache, stamp)
            info(f"initramfs ready in {time.monotonic() - step:.2f} s")
        else:
            info("initramfs: cached")
    size = dir_size(cache) / 1e6
    info(f"image ready in {cache} ({size:.0f} MB), build took {time.monotonic() - started:.1f} s")
    return 0


def guest_share_paths(project: Path) -> list[Path]:
    """Host paths mounted into the guest at the same place: the project, then the Python install."""
    paths = [project]
    venv, prefix = venv_python_prefix(project)
    if venv is not None and not venv.resolve().is_relative_to(project.resolve()):
        paths.append(venv)
    system = prefix is not None and (prefix == Path("/usr") or prefix.is_relative_to("/usr"))
    if prefix is not None and not system and prefix not in paths:
        paths.append(prefix)
    return paths


def run_shares(rootfs: Path, project: Path, paths: list[Path]) -> list[Share]:
    """The shares the guest init mounts from the "mounts" file, in mount order.

    The init mounts the rootfs itself, read-only and uncached (its options are part of the
    cached initramfs); its /usr, which holds every binary and library of the guest's own,
    is shared a second time and mounted over /usr with the read-only (cached) options.
    Then the project (read-write) and the Python install (read-only) at their own paths,
    and the project's .venv read-only on top of the project, so the venv's packages are
    cached too.
    """
    shares: list[Share] = []
    usr = rootfs / "usr"
    if usr.is_dir() and not usr.is_symlink():
        shares.append(("rootusr", usr, Path("/usr"), True))
    shares += [(f"share{i}", path, path, i > 0) for i, path in enumerate(paths)]
    venv = project / ".venv"
    if venv.is_dir() and not venv.is_symlink() and venv not in paths:
        check_share_path(venv, "venv")
        shares.append(("venv", venv, venv, True))
    return shares


def parse_env(items: list[str]) -> dict[str, str]:
    """Parse --env KEY=VAL (or KEY, taken from the host environment) settings."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise HarnessError(f"bad --env {item!r}: expected KEY=VALUE or KEY", 2)
        if not sep:
            if key not in os.environ:
                raise HarnessError(f"--env {key}: not set in the host environment", 2)
            value = os.environ[key]
        env[key] = value
    return env


def write_job(
    results: Path, project: Path, shares: list[Share], env: dict[str, str], command: list[str]
) -> None:
    """Write the per-run files the guest init reads from the results share."""
    (results / "mounts").write_text(
        "".join(
            f"{tag} {RO_SHARE_OPTS if ro else RW_SHARE_OPTS} {guest}\n"
            for tag, _host, guest, ro in shares
        )
    )
    lines = ["# generated by tools/vsock_vm.py: runs in the guest's chroot"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    message = shlex.quote(f"vsock-vm: cannot cd to {project} in the guest")
    lines.append(
        f"cd {shlex.quote(str(project))} || {{ echo {message} >&2; exit {EXIT_NO_STATUS}; }}"
    )
    lines.append("exec " + shlex.join(command) + " </dev/null")
    (results / "job.sh").write_text("\n".join(lines) + "\n")


def qemu_argv(cache: Path, shares: list[Share], memory: int, kvm: bool) -> list[str]:
    """The QEMU command line of the reference recipe, with one -virtfs per share."""
    qemu = which("qemu-system-x86_64") or "qemu-system-x86_64"
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
    machine = ["-M", "pc", *accel, "-m", str(memory)]
    quiet = "-nodefaults -no-user-config -display none -serial stdio -no-reboot -nic none".split()
    boot = [
        "-kernel",
        str(cache / "kernel" / "vmlinux"),
        "-initrd",
        str(cache / "initramfs.cpio.gz"),
    ]
    argv = [qemu, *machine, *quiet, *boot, "-append", KERNEL_APPEND]
    for tag, path, _guest, ro in shares:
        opt = f"local,path={path},mount_tag={tag},security_model=none"
        argv += ["-virtfs", opt + (",readonly=on" if ro else "")]
    return argv


def stream_guest(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Copy the guest console to our stdout until it closes.

    Returns "exited" (QEMU closed the console), "timeout" or "interrupted".
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out: BinaryIO | None = sys.stdout.buffer
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                return "exited"
            if out is not None:
                try:
                    out.write(data)
                    out.flush()
                except BrokenPipeError:  # our reader went away: let the guest finish anyway
                    out = None
    except KeyboardInterrupt:
        return "interrupted"


def _raise_interrupt(signum: int, frame: object) -> None:
    """Signal handler: turn SIGTERM/SIGHUP into KeyboardInterrupt, so cleanup runs."""
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    """Boot the cached guest, run the command in it, return its exit status."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise HarnessError("no command: use `run [options] -- CMD [ARG...]`", 2)
    if which("qemu-system-x86_64") is None:
        raise HarnessError(
            "qemu-system-x86_64 is missing: run `sudo python3 tools/vsock_vm.py build` "
            "(or apt-get install qemu-system-x86)",
            EXIT_NO_STATUS,
        )
    if args.kvm and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise HarnessError("--kvm: /dev/kvm is missing or not accessible", EXIT_NO_STATUS)
    cache = cache_dir()
    ready, why = image_state(cache)
    if not ready:
        raise HarnessError(f"{why}: run `sudo python3 tools/vsock_vm.py build`", EXIT_NO_STATUS)
    project = Path(os.path.abspath(args.project))
    if not project.is_dir():
        raise HarnessError(f"project dir {project} does not exist", EXIT_NO_STATUS)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "NEL_VSOCK_GUEST": "1",
    }
    venv, _prefix = venv_python_prefix(project)
    if venv is not None:
        env["PATH"] = f"{venv}/bin:{env['PATH']}"
        env["VIRTUAL_ENV"] = str(venv)
    env.update(parse_env(args.env))

    rootfs = cache / "rootfs"
    paths = guest_share_paths(project)
    for i, path in enumerate(paths):
        check_share_path(path, "project dir" if i == 0 else "shared path")
        ensure_mountpoint(rootfs, path)
    check_share_path(cache, "cache dir")
    results = Path(tempfile.mkdtemp(prefix="nel-vsock-vm-"))
    try:
        check_share_path(results, "temporary dir")
        shares = run_shares(rootfs, project, paths)
        write_job(results, project, shares, env, command)
        all_shares: list[Share] = [
            ("rootfs", rootfs, Path("/"), True),
            ("results", results, Path("/results"), False),
            *shares,
        ]
        argv = qemu_argv(cache, all_shares, args.memory, args.kvm)
        if args.verbose:
            info("+ " + shlex.join(argv))
        started = time.monotonic()
        # QEMU runs in its own session (Ctrl-C reaches only us); make SIGTERM and SIGHUP
        # unwind like Ctrl-C so QEMU is killed rather than orphaned.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_interrupt)
        with CacheLock(cache, exclusive=False):
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
                )
            except OSError as exc:
                raise HarnessError(f"cannot start QEMU: {exc}", EXIT_NO_STATUS) from None
            outcome = "interrupted"
            try:
                outcome = stream_guest(proc, args.timeout)
            finally:
                if outcome == "exited":
                    try:  # the console closed: QEMU is exiting, give it a moment
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.poll() is None:
                    proc.kill()
                qemu_status = proc.wait()
        elapsed = time.monotonic() - started
        if outcome == "timeout":
            info(f"timeout: the guest ran {args.timeout:g} s without finishing; QEMU was killed")
            return EXIT_TIMEOUT
        if outcome == "interrupted":
            info("interrupted: QEMU was killed")
            return EXIT_INTERRUPTED
        try:
            status = int((results / "status").read_text().strip())
        except (OSError, ValueError):
            info(
                f"the guest reported no exit status (QEMU exited {qemu_status} after "
                f"{elapsed:.1f} s): kernel panic, guest init failure or QEMU error; "
                "see the console output above"
            )
            return EXIT_NO_STATUS
        if args.verbose:
            info(f"guest command exited with status {status} ({elapsed:.1f} s)")
        return status
    finally:
        shutil.rmtree(results, ignore_errors=True)


def cmd_check(args: argparse.Namespace) -> int:
    """Report whether the vsock tier can run here, and how to enable it if not."""
    lines: list[tuple[str, str, str]] = []
    root = is_root()
    lines.append(
        (
            "ok" if root else "note",
            "root",
            "yes" if root else "no: `build` needs root (sudo); `run` does not",
        )
    )
    tools_ok = True
    for tool, package in HOST_TOOLS.items():
        path = tool_status(tool)
        tools_ok &= path is not None
        lines.append(("ok" if path else "missing", tool, path or f"package {package}"))
    qemu_ok = tool_status("qemu-system-x86_64") is not None
    cache = cache_dir()
    image_ok, why = image_state(cache)
    lines.append(("ok" if image_ok else "missing", "image", why))
    project = Path(os.path.abspath(args.project))
    path_problems = []
    for shared in [*guest_share_paths(project), cache]:
        try:
            check_share_path(shared, "path")
        except HarnessError as exc:
            path_problems.append(str(exc))
            lines.append(("bad", "path", str(exc)))
    paths_ok = not path_problems
    venv, prefix = venv_python_prefix(project)
    lines.append(
        (
            "ok" if venv else "note",
            "venv",
            f"{venv}/bin/python -> {prefix}" if venv else f"no {project}/.venv",
        )
    )
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    lines.append(
        (
            "note",
            "kvm",
            "/dev/kvm accessible: `run --kvm` may work (default TCG)"
            if kvm
            else "no usable /dev/kvm: TCG only (the default)",
        )
    )
    for state, what, detail in lines:
        print(f"  {state:8} {what:20} {detail}")
    ready = qemu_ok and image_ok and paths_ok
    buildable = root and paths_ok and (tools_ok or which("apt-get") is not None)
    if ready:
        print("vsock tier: ready. Run: python3 tools/vsock_vm.py run -- CMD")
        return 0
    if buildable:
        print("vsock tier: can run here once built. Run: python3 tools/vsock_vm.py build")
        return 0
    how = list(path_problems)
    if not (qemu_ok and image_ok):
        if not root:
            how.append("run `sudo python3 tools/vsock_vm.py build` (needs root, apt and network)")
        elif not (tools_ok or which("apt-get")):
            how.append("install: " + " ".join(sorted(set(HOST_TOOLS.values()))))
    print("vsock tier: cannot run here. To enable: " + "; ".join(how))
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run a subcommand; errors become one message and a status."""
    parser = argparse.ArgumentParser(
        prog="tools/vsock_vm.py",
        description="Run commands in a QEMU guest with real AF_VSOCK (the vsock test tier).",
        epilog="Cache: $NEL_VSOCK_CACHE or " + DEFAULT_CACHE + ". Exit statuses: see the "
        "module docstring (run: the guest command's, 124 timeout, 125 no status).",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{check,build,run}")

    p_check = sub.add_parser("check", help="report whether the tier can run here")
    p_check.add_argument(
        "--project", default=str(DEFAULT_PROJECT), help="project directory (default: %(default)s)"
    )
    p_check.set_defaults(func=cmd_check)

    p_build = sub.add_parser("build", help="build and cache the guest image (root)")
    p_build.add_argument("--force", action="store_true", help="rebuild every part")
    p_build.add_argument(
        "--mirror",
        metavar="URL",
        help="Debian mirror for debootstrap (default: the one the machine's apt sources name)",
    )
    p_build.add_argument(
        "--project",
        default=str(DEFAULT_PROJECT),
        metavar="DIR",
        help="project whose .venv Python is checked against the guest and "
        "whose mount points are made (default: %(default)s)",
    )
    p_build.set_defaults(func=cmd_build)

    p_run = sub.add_parser(
        "run",
        help="boot the guest and run CMD in the project dir",
        usage="%(prog)s [options] -- CMD [ARG...]",
    )
    p_run.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=300.0,
        help="seconds before QEMU is killed (default: %(default)g)",
    )
    p_run.add_argument(
        "--memory", type=int, default=512, metavar="MB", help="guest memory (default: %(default)s)"
    )
    p_run.add_argument(
        "--kvm",
        action="store_true",
        help="use KVM instead of TCG (needs real VT-x/AMD-V behind /dev/kvm)",
    )
    p_run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VAL]",
        help="set a variable for the guest command (repeatable; KEY alone copies the host's value)",
    )
    p_run.add_argument(
        "--project",
        default=str(DEFAULT_PROJECT),
        metavar="DIR",
        help="project directory, shared read-write (default: %(default)s)",
    )
    p_run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the QEMU command line and the elapsed time",
    )
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    p_run.set_defaults(func=cmd_run)

    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except HarnessError as exc:
        info(f"error: {exc}")
        if args.subcommand == "run" and exc.status == 1:
            return EXIT_NO_STATUS  # run's own failures all map to "no status from the guest"
        return exc.status
    except KeyboardInterrupt:
        info("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. permissions: one line, not a traceback
        info(f"error: {exc}")
        return EXIT_NO_STATUS if args.subcommand == "run" else 1


if __name__ == "__main__":
    sys.exit(main())
