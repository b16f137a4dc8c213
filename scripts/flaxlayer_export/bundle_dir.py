"""Writing a bundle directory all at once.

The files go into a fresh temporary directory next to the target (same parent, so the same
file system), each synced; the directory is then put in place by one rename. An existing
bundle stays untouched until the new one is complete: on Linux the two directories are
swapped atomically (`renameat2(RENAME_EXCHANGE)`), elsewhere the old one is first renamed
aside. The old bundle is deleted only after the new one is in place. An export that fails or
is interrupted leaves at most a `.<name>.tmp-*` directory beside the target, never a
half-written bundle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile

# Files an export writes; a target directory holding anything else is not replaced.
BUNDLE_SUFFIXES = (".jaxexport", ".safetensors")
BUNDLE_NAMES = ("manifest.json",)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _foreign_files(out_dir: str) -> list[str]:
    return sorted(f for f in os.listdir(out_dir)
                  if not (f in BUNDLE_NAMES or f.endswith(BUNDLE_SUFFIXES)))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False when the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bundle(out_dir: str, files: dict[str, bytes]) -> None:
    """Write `files` ({file name: bytes}) as the directory `out_dir`, replacing a previous
    bundle there only once every new file is written and synced."""
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.split(out_dir)
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir} exists and is not a directory")
        foreign = _foreign_files(out_dir)
        if foreign:
            raise ValueError(
                f"{out_dir} holds files that are not part of a bundle ({', '.join(foreign)}); "
                "export into an empty or new directory, or into a previous bundle")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for fname in sorted(files):
            if os.sep in fname or fname.startswith("."):
                raise ValueError(f"bad bundle file name {fname!r}")
            write_file(os.path.join(tmp, fname), files[fname])
        _fsync_dir(tmp)
        _put_in_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)


def _put_in_place(tmp: str, out_dir: str) -> None:
    """Move the complete directory `tmp` to `out_dir`; remove the bundle it replaces."""
    if not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    if _exchange(tmp, out_dir):
        shutil.rmtree(tmp)  # now the old bundle
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old)
