"""Saving off the training thread: a snapshot of the state in host memory, written by a
background thread while training goes on.

    writer = BackgroundWriter("Checkpointer(folder='run')")
    snapshot = host_snapshot(state)            # the training thread waits for this copy only
    writer.submit(lambda: write_checkpoint(snapshot, path), path)
    ...                                        # training goes on while the file is written
    writer.wait()                              # done; a failed write raises here

`host_snapshot` copies every tensor of a state (a tree of dicts, lists and tuples, such as
`checkpoint_state` returns) to host memory, so later training steps cannot change what is
written. It copies storages, not tensors: tensors that share a storage (tied weights, views)
share one in the copy, so `torch.save` writes the same file from the snapshot as from the
state itself. CUDA tensors go to pinned memory, all copies queued before one wait for the
device.

A `BackgroundWriter` runs one write at a time on a thread of its own. `submit` first waits
for the previous write, so at most one snapshot waits in host memory besides the one being
taken. A write that fails is not lost: its exception is kept and raised by the next `submit`
or `wait`, with a note naming the writer and the file. The thread is not a daemon: a process
that ends (Ctrl-C included) finishes the write first, and a process killed in the middle of
it leaves what an interrupted synchronous write leaves (with `write_atomically`, the
previous file).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

__all__ = ["BackgroundWriter", "host_snapshot"]


def host_snapshot(state: Any) -> Any:
    """`state` with every tensor copied to host memory (pinned for CUDA tensors), sharing
    storages where the originals do; containers are copied, other values kept."""
    snapshot = _Snapshot()
    copy = snapshot.of(state)
    for device in {device for device, _ in snapshot.storages if device.type == "cuda"}:
        torch.cuda.synchronize(device)  # its non-blocking copies to pinned memory are done
    return copy


@attrs.define
class _Snapshot:
    """One `host_snapshot`: what was copied so far, so that a tensor or container met twice
    is copied once (as `copy.deepcopy` does) and `torch.save` pickles the same structure."""

    storages: dict[tuple, torch.Tensor] = attrs.Factory(dict)  # (device, address) -> bytes
    copies: dict[int, Any] = attrs.Factory(dict)  # id of an original -> its copy
    originals: list = attrs.Factory(list)  # kept alive, so their ids stay theirs

    def of(self, value: Any) -> Any:
        if not isinstance(value, (torch.Tensor, dict, list, tuple)):
            return value
        if id(value) in self.copies:
            return self.copies[id(value)]
        if isinstance(value, torch.Tensor):
            copy = self._tensor(value)
        elif isinstance(value, dict):
            copy = OrderedDict() if isinstance(value, OrderedDict) else {}
            copy.update((k, self.of(v)) for k, v in value.items())
            if hasattr(value, "_metadata"):  # a module state_dict's per-module versions
                copy._metadata = value._metadata
        elif isinstance(value, list):
            copy = [self.of(v) for v in value]
        else:
            copy = tuple(self.of(v) for v in value)
        self.copies[id(value)] = copy
        self.originals.append(value)
        return copy

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the host: a view of the copy of its whole storage (one per storage)."""
        tensor = tensor.detach()
        if tensor.layout != torch.strided or type(tensor) is not torch.Tensor:
            # sparse layouts have no single storage, a DTensor's is its shard's
            return tensor.to("cpu", copy=True)
        storage = tensor.untyped_storage()
        # an empty storage has no address to share: each is a storage of its own
        key = (tensor.device, storage.data_ptr() if storage.nbytes() else id(tensor))
        host = self.storages.get(key)
        if host is None:
            cuda = tensor.device.type == "cuda"
            whole = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage)
            host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=cuda)
            host.copy_(whole, non_blocking=cuda)
            self.storages[key] = host
        return torch.empty(0, dtype=tensor.dtype).set_(
            host.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


@attrs.define
class BackgroundWriter:
    """Runs one write at a time on a background thread; see the module docstring.

    Args:
        owner: who writes, as the note on a failure names it
            (e.g. `"Checkpointer(folder='run', async_save=True)"`).
    """

    owner: str
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _target: Path | None = attrs.field(default=None, init=False)  # the file being written
    _error: BaseException | None = attrs.field(default=None, init=False)

    @property
    def target(self) -> Path | None:
        """The file (or folder) of the write running or last run."""
        return self._target

    def submit(self, write: Callable[[], None], target: Path) -> None:
        """Wait for the previous write (raising its failure), then start `write()`, which
        writes `target`, on the background thread and return."""
        self.wait()
        self._target = Path(target)
        self._thread = threading.Thread(target=self._run, args=(write,), daemon=False,
                                        name=f"fluxpy writer of {self._target.name}")
        self._thread.start()

    def wait(self) -> None:
        """Return when no write is running; raise the failure of the one that ended, once."""
        if self._thread is not None:
            self._thread.join()  # Ctrl-C here leaves the thread to finish; wait joins again
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            error.add_note(f"{self.owner}: the background write of {self._target} failed. "
                           "The files written before it are as they were.")
            raise error

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as exc:  # kept for the training thread, which raises it
            self._error = exc
