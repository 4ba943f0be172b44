"""What a `--model_dir` may hold, and whether a training command starts, resumes or refuses there.

A run folder holds only the training command's outputs and `run.json`, the record of what is trained in it (variant,
architecture overrides, dataset, input size). A second command in the same folder resumes an interrupted run of the
same thing from its last backed-up epoch, starts it again when no epoch was completed, and refuses a folder that
holds another run or files that are not a run's, so that nothing of the user's is overwritten; `--overwrite`
replaces a run (of anything), never unrelated files.

One command at a time per folder: `lock` takes `.lock` there, refused while another live process holds it. On a
local file system it is an `fcntl.flock` on the open file, which the kernel drops when its holder dies, even by
SIGKILL; the file's JSON body says who holds it. Object stores (`gs://`, any remote URL) have no locks: there
`.lock` is a lease, the holder's JSON with a heartbeat time that a daemon thread rewrites every `refresh_s`; a
lease whose heartbeat is older than `timeout_s` is taken over (see training/README.md for its race window).
"""

import errno
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from keras_cmt.training import storage

RUN_RECORD = "run.json"
LOCK = ".lock"
# Everything keras_cmt.training.train writes at the top of model_dir.
OUTPUTS = frozenset(
    {
        "backup",
        "checkpoints",
        "logs",
        "metrics.csv",
        "curves.png",
        "results.json",
        "model.keras",
        "model.weights.h5",
        RUN_RECORD,
        LOCK,
    }
)
# A remote lease not refreshed for this long is taken to belong to a dead process; refreshed four times as often,
# so that a few slow or failed writes do not lose it.
LEASE_TIMEOUT_S = 120.0


class RunFolderError(ValueError):
    """A model_dir the command must not use; one line naming the folder and the cause."""


def identity(model, model_overrides, dataset, image_size):
    """What makes two commands the same run (the schedule may change between a run and its resumption)."""
    overrides = json.loads(model_overrides) if model_overrides else None
    return {"model": model, "model_overrides": overrides, "dataset": dataset, "image_size": int(image_size)}


def describe(ident):
    extra = f" with {json.dumps(ident['model_overrides'], sort_keys=True)}" if ident.get("model_overrides") else ""
    return f"{ident.get('model')}{extra} on {ident.get('dataset')} at {ident.get('image_size')}px"


def read_record(model_dir):
    path = storage.join(model_dir, RUN_RECORD)
    if not storage.exists(path):
        return None
    try:
        record = storage.read_json(path)
        return record if isinstance(record, dict) and isinstance(record.get("identity"), dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable: a record that matches nothing


def last_backed_up_epoch(model_dir):
    """The highest epoch any backup under model_dir/backup completed (0 when there is none)."""
    epochs = [0]
    backup = storage.join(model_dir, "backup")
    if not storage.isdir(backup):
        return 0
    for folder, _, files in storage.walk(backup):
        if "training_metadata.json" in files:
            try:
                epochs.append(int(storage.read_json(storage.join(folder, "training_metadata.json"))["epoch"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass
    return max(epochs)


def plan(model_dir, ident, overwrite):
    """("new" | "resume" | "restart", the line to print). Raises RunFolderError for a folder it must not use."""
    if storage.exists(model_dir) and not storage.isdir(model_dir):
        raise RunFolderError(f"--model_dir={model_dir} is a file, not a folder")
    entries = storage.listdir(model_dir) if storage.isdir(model_dir) else []
    # Leftovers of an interrupted atomic write, and the lock (the caller's own, or a dead or finished holder's).
    entries = [e for e in entries if not e.startswith(".tmp-") and e != LOCK]
    if not entries:
        return "new", f"starting a new run in {model_dir}"
    foreign = [e for e in entries if e not in OUTPUTS]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunFolderError(
            f"--model_dir={model_dir} holds files that are not a keras_cmt run ({shown}); give a new or empty folder"
        )
    record = read_record(model_dir)
    if record is not None and record.get("identity") != ident:
        other = describe(record["identity"]) if record.get("identity") else f"something unreadable ({RUN_RECORD})"
        if not overwrite:
            raise RunFolderError(
                f"--model_dir={model_dir} holds a run of {other}, not of {describe(ident)}; use "
                "another --model_dir or --overwrite to replace it"
            )
        return "restart", f"replacing the run of {other} in {model_dir} (--overwrite)"
    if storage.exists(storage.join(model_dir, "results.json")):
        if not overwrite:
            raise RunFolderError(
                f"--model_dir={model_dir} holds a finished run ({model_dir}/results.json); use "
                "another --model_dir or --overwrite"
            )
        return "restart", f"starting the run in {model_dir} again (--overwrite)"
    if overwrite:
        return "restart", f"starting the run in {model_dir} again (--overwrite)"
    epoch = last_backed_up_epoch(model_dir)
    if epoch > 0:
        return "resume", f"resuming the interrupted run in {model_dir} after epoch {epoch}"
    return "new", f"starting the run in {model_dir} again: the interrupted one completed no epoch"


def clear(model_dir):
    """Removes a previous run's outputs (only the names in OUTPUTS, but the lock the caller holds)."""
    for name in OUTPUTS - {LOCK}:
        storage.remove(storage.join(model_dir, name))


def write_record(model_dir, ident, argv):
    storage.write_json(storage.join(model_dir, RUN_RECORD), {"identity": ident, "command": list(argv)})


class RunFolderInUse(RunFolderError):
    """Another live training command holds the folder's lock or lease."""


def _holder_body():
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "heartbeat": time.time(),
    }


def _in_use(model_dir, holder, detail=""):
    if isinstance(holder, dict) and holder.get("pid") is not None:
        who = f"process {holder.get('pid')} on {holder.get('host', 'an unknown host')}"
        if holder.get("started"):
            who += f", started {holder['started']}"
    else:
        who = "another process"
    return RunFolderInUse(
        f"--model_dir={model_dir} is in use by another training run ({who}{detail}); wait for "
        "it to end or use another --model_dir"
    )


class _LockUnsupported(Exception):
    """The local file system refuses flock (some network mounts): the folder gets a lease instead."""


class LocalLock:
    """`fcntl.flock` on `model_dir/.lock`, held by this process's open descriptor until `release` or death."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK)
        self.fd = None
        self.holder = None

    def acquire(self):
        import fcntl

        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                body = _read_fd(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _in_use(self.model_dir, body) from None
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise _LockUnsupported() from None
                raise
            # A releasing holder unlinks the file before closing it: what we locked must still be the file there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                self.holder = _holder_body()
                data = json.dumps(self.holder, sort_keys=True).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                return self
            os.close(fd)
        raise RunFolderError(f"--model_dir={self.model_dir}: could not lock {self.path}")

    def check(self):
        """Nothing to check: a flock cannot be taken away."""

    def release(self):
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_fd(fd):
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError):
        return None  # being written, or not ours


class Lease:
    """`model_dir/.lock` on a file system without locks: the holder's JSON, its `heartbeat` rewritten every
    `refresh_s` by a daemon thread. A lease older than `timeout_s` is taken over. After writing its own lease the
    taker waits `settle_s` and reads it back, so that of two takers racing on a last-writer-wins store only the
    one whose write stayed goes on. `check` raises once another process has taken the lease."""

    def __init__(self, model_dir, timeout_s=LEASE_TIMEOUT_S, refresh_s=None, settle_s=None):
        self.model_dir = model_dir
        self.path = storage.join(model_dir, LOCK)
        self.timeout_s = float(timeout_s)
        self.refresh_s = float(refresh_s) if refresh_s is not None else self.timeout_s / 4
        self.settle_s = float(settle_s) if settle_s is not None else min(2.0, self.timeout_s / 10)
        self.holder = None
        self.lost_to = None
        self._stop = threading.Event()
        self._thread = None

    def _read(self):
        try:
            body = storage.read_json(self.path) if storage.exists(self.path) else None
        except (OSError, ValueError):
            return {}  # unreadable: a lease that names nobody, taken over once its file is old
        return body if isinstance(body, dict) or body is None else {}

    def _age(self, body):
        try:
            return time.time() - float(body["heartbeat"])
        except (KeyError, TypeError, ValueError):
            return float("inf")

    def acquire(self):
        current = self._read()
        if current is not None:
            age = self._age(current)
            if age < self.timeout_s:
                raise _in_use(
                    self.model_dir,
                    current,
                    f", lease refreshed {max(age, 0):.0f} s ago; taken over "
                    f"after {self.timeout_s:.0f} s without a refresh",
                )
            logging.warning(
                "Taking over the stale lease %s (%s)",
                self.path,
                "unreadable" if not current else f"last refreshed {age:.0f} s ago",
            )
        self.holder = _holder_body()
        storage.write_json(self.path, self.holder)
        time.sleep(self.settle_s)
        now = self._read()
        if (now or {}).get("token") != self.holder["token"]:
            raise _in_use(self.model_dir, now, ", which took the lease at the same time")
        self._thread = threading.Thread(target=self._beat, name="run-folder-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.refresh_s):
            current = self._read()
            if current and current.get("token") != self.holder["token"]:
                self.lost_to = current
                logging.error(
                    "The lease %s was taken over by process %s on %s",
                    self.path,
                    current.get("pid"),
                    current.get("host"),
                )
                return
            self.holder["heartbeat"] = time.time()
            try:
                storage.write_json(self.path, self.holder)
            except Exception as e:  # noqa: BLE001 - retried at the next beat; the timeout allows a few misses
                logging.warning("Could not refresh the lease %s: %s", self.path, e)

    def check(self):
        if self.lost_to is not None:
            who = f"process {self.lost_to.get('pid')} on {self.lost_to.get('host', 'an unknown host')}"
            raise RunFolderInUse(
                f"--model_dir={self.model_dir}: {who} took over this run's lease (no refresh "
                f"for {self.timeout_s:.0f} s?); this run stopped so as not to write over it"
            )

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.holder is not None and self.lost_to is None:
            try:
                if (self._read() or {}).get("token") == self.holder["token"]:
                    storage.remove(self.path)
            except Exception as e:  # noqa: BLE001 - a stale lease is taken over later anyway
                logging.warning("Could not remove the lease %s: %s", self.path, e)
        self.holder = None


def lock(model_dir, timeout_s=LEASE_TIMEOUT_S, refresh_s=None, settle_s=None):
    """Takes `model_dir`'s lock (local) or lease (remote), creating the folder; raises RunFolderInUse while another
    live process holds it, storage.StorageError when the folder cannot be created or written."""
    try:
        storage.makedirs(model_dir)
        if not storage.is_remote(model_dir):
            try:
                return LocalLock(model_dir).acquire()
            except _LockUnsupported:
                pass
        return Lease(model_dir, timeout_s, refresh_s, settle_s).acquire()
    except RunFolderError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, TensorFlow's OpError, storage.WriteError
        if storage.is_no_space(e):
            raise storage.NoSpaceError(f"--model_dir={model_dir}: no space left on device") from None
        raise storage.StorageError(f"--model_dir={model_dir}: cannot use it: {storage.first_line(e)}") from None
