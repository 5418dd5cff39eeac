"""Decode worker processes that write whole batches straight into a shared ring of batch slots.

The CPU path's default (``num_workers > 0``, ``transport="ring"``). Why: decode threads
share one GIL with the training loop (the Python between decodes waits for it), and DataLoader
worker processes hand each batch over in a fresh shared-memory segment (its page faults cost
about half a decode). Here:

* the ring is one anonymous shared mapping (``mmap(-1)``, ``MAP_SHARED``) of ``slots`` batch
  slots, made once per loader and touched once; the worker processes are forked from the
  loader once, at its first epoch, and kept (a fork of a training process costs tens of ms),
  so they share the mapping. It has no name, so nothing can be left in ``/dev/shm``;
* worker ``w`` of ``n`` decodes the steps ``w, w+n, ...`` (as DataLoader workers would); the
  main process sends it ``(step, slot, clip rows)`` on a pipe (1 kB) and gets back ``(step,
  slot, kept, faults)``; it labels the batch itself (a few numpy operations). A loop that
  stops mid-epoch waits for the steps in flight, so the next epoch starts clean;
* a batch's frames are a zero-copy view of its slot. A slot is lent again only once every
  tensor made from it is gone (``weakref.finalize`` on the slot's numpy view, which the tensor
  keeps alive). At most ``slots - depth`` slots are lent at once; beyond that (a caller keeping
  many batches, e.g. ``list(loader)``) the frames are copied out and the slot reused at once,
  so the workers always have ``depth`` slots to decode into and can never overwrite a batch
  that is still held;
* an error in a worker is raised in the trainer, naming the worker, step and shard files (a
  ``SonostreamError`` keeps its type; anything else is a RuntimeError carrying the worker's
  traceback); a worker that dies is reported with its exit code. Workers exit after an error,
  on ``ClipLoader.close()`` (or when the loader is garbage-collected), and when the main
  process dies (their task pipe closes).
"""
from __future__ import annotations

import collections
import logging
import mmap
import multiprocessing as mp
import os
import signal
import traceback
import weakref
from multiprocessing.connection import wait

import numpy as np
import torch

from preprocessing.format import SonostreamError

from .batch import resize_frames

log = logging.getLogger("sonostream.loader")
# Slurm's SIGTERM / SIGUSR1 and Ctrl-C's SIGINT reach every process of the job; the trainer
# handles them (finishes its step, checkpoints, then closes the loader), so the workers ignore
# them. They are blocked across the fork, so none can land before the worker ignores it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
HELD = 2          # slots a caller may hold zero-copy beyond the in-flight ones (the loop's batch
                  # and the next one being handed over)


def ring_available() -> bool:
    """The ring needs ``fork``: the workers share its mapping (and the decoder) by inheritance."""
    return "fork" in mp.get_all_start_methods()


class SlotRing:
    """``slots`` uint8 batch slots of ``shape`` (B, K, H, W) in one anonymous shared mapping."""

    def __init__(self, slots: int, shape: tuple):
        self.slots, self.shape = int(slots), tuple(int(s) for s in shape)
        nbytes = max(1, self.slots * int(np.prod(self.shape)))
        self._mem = mmap.mmap(-1, nbytes)               # anonymous + MAP_SHARED: kept by forks
        self._base = np.frombuffer(self._mem, np.uint8, self.slots * int(np.prod(self.shape)))
        self._base = self._base.reshape(self.slots, *self.shape)
        self._base.fill(0)                              # touched once, here
        self.free = collections.deque(range(self.slots))
        self.lent: set[int] = set()

    def array(self, slot: int) -> np.ndarray:
        """The whole slot, for the worker that writes it."""
        return self._base[slot]

    def lend(self, slot: int, clips: int) -> np.ndarray:
        """A view of the first ``clips`` clips of ``slot``; the slot comes back to ``free`` when
        the view (and so every tensor made from it) is gone."""
        view = self._base[slot, :clips]
        self.lent.add(slot)
        weakref.finalize(view, self._back, slot)
        return view

    def _back(self, slot: int) -> None:   # any thread: set/deque operations are atomic
        self.lent.discard(slot)
        self.free.append(slot)


def _shards_of(plan, step: int) -> list[str]:
    v = plan.table.view
    return sorted({v.shards[i] for i in np.unique(v.shard_id[plan.clip_rows(step)]).tolist()})


def _error(e: BaseException) -> tuple:
    """An error in a worker as plain text: (its class if a SonostreamError, else None; its
    message; its formatted traceback). Only these strings cross the pipe: no exception object
    is unpickled in the trainer."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    kind = f"{type(e).__module__}.{type(e).__qualname__}" if isinstance(e, SonostreamError) else None
    return kind, str(e), tb


def _sonostream_class(kind: str) -> type:
    """The SonostreamError (sub)class named ``kind``, looked up among the loaded classes only."""
    todo, seen = [SonostreamError], set()
    while todo:
        cls = todo.pop()
        if f"{cls.__module__}.{cls.__qualname__}" == kind:
            return cls
        seen.add(cls)
        todo += [c for c in cls.__subclasses__() if c not in seen]
    return SonostreamError


def _worker(w: int, decoder, ring: SlotRing, decode_size, out_size, conns) -> None:
    """Decode the ``(step, slot, clip rows)`` the main process sends into their slots until
    its pipe closes (or a ``None``)."""
    for sig in STOP_SIGNALS:                # blocked since the fork (DecodePool.__init__)
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    tasks, results = conns[w][0], conns[w][3]
    for i, (t_recv, t_send, r_recv, r_send) in enumerate(conns):   # keep only our two ends
        t_send.close()
        r_recv.close()
        if i != w:
            t_recv.close()
            r_send.close()
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    decoder.threads = 1                     # one process decodes one batch: no thread pool
    resize = tuple(decode_size) != tuple(out_size)
    while True:
        try:
            msg = tasks.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        step, slot, rows = msg
        try:
            out = ring.array(slot)
            if resize:
                tmp = np.empty((*rows.shape, *decode_size), np.uint8)
                kept, faults = decoder.decode_into(rows, tmp)
                nk = int(kept.sum())
                small = resize_frames(torch.from_numpy(tmp[kept]).unsqueeze(2), out_size)
                out[:nk] = small.squeeze(2).numpy()
            else:
                kept, faults = decoder.decode_into(rows, out[:len(rows)])
                if faults:
                    nk = int(kept.sum())
                    out[:nk] = out[:len(rows)][kept]        # the kept clips to the front
            results.send((step, slot, kept, faults, None))
        except BaseException as e:  # noqa: BLE001 - raised in the main process
            try:
                results.send((step, slot, None, None, _error(e)))
            finally:
                break


class DecodePool:
    """``workers`` decode processes forked once (at the first epoch) and kept, like DataLoader's
    ``persistent_workers``: a fork of a large training process costs tens of ms. They stop
    with :meth:`close` (the ClipLoader's ``close``, or when it is garbage-collected), after an
    error, and when the main process dies (their task pipe closes)."""

    def __init__(self, decoder, ring: SlotRing, workers: int, decode_size, out_size):
        self.ring, self.n = ring, max(1, workers)
        ctx = mp.get_context("fork")
        self.conns = [(*ctx.Pipe(duplex=False), *ctx.Pipe(duplex=False)) for _ in range(self.n)]
        self.procs = [ctx.Process(target=_worker, name=f"sonostream-decode-{w}", daemon=True,
                                  args=(w, decoder, ring, tuple(decode_size), tuple(out_size),
                                        self.conns))
                      for w in range(self.n)]
        self.closed = False
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for p in self.procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # pending ones are handled now
            for t_recv, _, _, r_send in self.conns:   # ours: task send ends, result recv ends
                t_recv.close()
                r_send.close()

    def send(self, step: int, slot: int, rows: np.ndarray, plan=None) -> None:
        w = step % self.n
        try:
            self.conns[w][1].send((step, slot, rows))
        except OSError:                     # BrokenPipeError: the worker is gone
            self._died(w, plan, step)

    def _died(self, w: int, plan, step: int):
        proc = self.procs[w]
        proc.join(timeout=5)
        where = (f"epoch {plan.epoch}, step {step}, reading {', '.join(_shards_of(plan, step))}"
                 if plan is not None else f"step {step}")
        raise RuntimeError(f"decode worker {w} (pid {proc.pid}) exited with code "
                           f"{proc.exitcode} on {where}") from None

    def recv(self, plan, step: int):
        """The worker's reply for ``step`` (its next one); raises if the worker failed or died."""
        w = step % self.n
        conn, proc = self.conns[w][2], self.procs[w]
        try:
            while not conn.poll():
                if proc.sentinel in wait([conn, proc.sentinel]) and not conn.poll():
                    raise EOFError
            got, slot, kept, faults, error = conn.recv()   # EOFError: it died (pipe closed)
        except (EOFError, OSError):
            self._died(w, plan, step)
        if error is not None:
            _raise_worker_error(w, proc.pid, plan, got, error)
        if got != step:
            raise RuntimeError(f"decode worker {w} returned step {got}, expected {step}")
        return slot, kept, faults

    def close(self) -> None:
        """Close the task pipes (a worker exits at its next read), then join; terminate late
        ones. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for _, t_send, r_recv, _ in self.conns:
            for c in (t_send, r_recv):
                try:
                    c.close()
                except OSError:
                    pass
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                os.kill(p.pid, 9)
                p.join()


def _raise_worker_error(w: int, pid: int, plan, step: int, error: tuple):
    kind, text, tb = error
    where = (f"decode worker {w} (pid {pid}) failed on epoch {plan.epoch}, step {step}, reading "
             f"{', '.join(_shards_of(plan, step))}")
    if kind is not None:                     # a data error: its type (the CLI's exit 2) kept
        cls = _sonostream_class(kind)
        try:
            again = cls(f"{text} ({where})")
        except Exception:  # noqa: BLE001 - a subclass with another signature
            again = SonostreamError(f"{text} ({where})")
        raise again
    raise RuntimeError(f"{where}: {tb.strip().splitlines()[-1]}\n\nworker traceback:\n{tb}")


def ring_batches(plan, pool: DecodePool, prefetch: int):
    """This rank's ClipBatches of ``plan`` in step order, decoded by ``pool``'s processes into
    its ring's slots, ``prefetch`` steps ahead per worker."""
    ring, n = pool.ring, pool.n
    depth = n * max(1, prefetch)
    if ring.slots < depth + 1:
        raise ValueError(f"a ring of {ring.slots} slots cannot keep {depth} steps in flight")
    inflight: dict[int, int] = {}           # step -> slot, sent and not yet handed out
    try:
        sent = 0
        for s in range(plan.steps):
            while sent < plan.steps and sent < s + depth and ring.free:
                slot = ring.free.popleft()
                inflight[sent] = slot
                pool.send(sent, slot, plan.clip_rows(sent), plan)
                sent += 1
            slot, kept, faults = pool.recv(plan, s)
            del inflight[s]
            nk = int(kept.sum())
            if len(ring.lent) < ring.slots - depth:
                frames = ring.lend(slot, nk)
            else:                            # the caller holds many batches: copy, reuse the slot
                frames = ring.array(slot)[:nk].copy()
                ring.free.append(slot)
            for fault in faults:
                log.warning("skipped a corrupt member: shard %s, key %s (%s)", *fault)
            yield plan.batch(s, torch.from_numpy(frames).unsqueeze(2), kept, faults)
            del frames
    except GeneratorExit:                   # left mid-epoch: wait for the steps in flight
        try:
            for s in sorted(inflight):
                pool.recv(plan, s)
                ring.free.append(inflight.pop(s))
        except BaseException:  # noqa: BLE001 - a worker failed or died: stop them all
            pool.close()
        raise
    except BaseException:                   # an error here or in a worker: stop them all
        pool.close()
        raise
    finally:
        if inflight:
            pool.close()                    # no worker left to write these slots
            ring.free.extend(inflight.values())
