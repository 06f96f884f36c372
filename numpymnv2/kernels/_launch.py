"""How a kernel of this package runs: a row function, one of two parallel loops, and one launch.

A kernel is written as a **row function**, a small ``@njit`` function that does the work of one row of a
tensor (for an NHWC activation, the ``W x C`` values of one ``(n, h)``), plus one of two loops written once
here:

- :func:`parallel_rows` runs ``row(inputs, r)`` for every row ``r``, each thread one block of rows
  (elementwise passes, the depthwise forward and input gradient: each row writes only its own output).
- :func:`per_thread_sums` runs ``row(inputs, r, acc)``, which adds row ``r``'s contribution to a sum into
  ``acc``; each thread sums one block of rows into its own ``acc`` (in the inputs' dtype) and adds it into its
  own float64 slot ``partial[t]`` every ``rows_per_flush`` rows; the kernel returns the sum of the slots.
  This is the reduction of the BatchNorm statistics, of the BatchNorm parameter
  gradients and of the depthwise weight gradient: no two threads write the same memory, and the float64
  slots keep long sums of float32 values accurate.

``inputs`` is a tuple of arrays and scalars that the row function unpacks by name. Row functions are declared
``@njit(cache=True, inline="always")`` so that Numba compiles them into the loop: a call per row made the
BatchNorm passes 5-40% slower on the short rows of a batch-32, 32x32 step (CPU time of the serial copies against
the kernels they replaced).

Each loop is compiled twice (:class:`Kernel`): ``parallel=True`` and serial. Calling the kernel,
``kernel(work, rows, inputs[, shape])``, launches the serial copy in the calling thread for less than
:data:`PARALLEL_MIN_WORK` elements of work (and, with the OpenMP layer, while other work competes for the cores,
until the parallel copy has compiled in the background, or in a child made by ``fork()``: see
:meth:`Kernel.launch`), else the parallel copy while holding :data:`LAUNCH_LOCK`: Numba's
workqueue threading layer (see :mod:`numpymnv2.kernels._threads`) aborts the process when two Python threads
enter it at once, and since the lock is taken by the launch itself no public function can forget it.
"""
from __future__ import annotations

import collections
import hashlib
import os
import pathlib
import threading
import time
import types

import numba
import numpy as np
from numba import njit, prange
from numba.core import event as numba_event

from numpymnv2.kernels import _contention, _threads

LAUNCH_LOCK = threading.Lock()

# Below this many elements of work a kernel runs serially in the calling thread: waking the pool costs more
# than it saves, and on a loaded machine a parallel launch waits for a worker that may not be scheduled.
# Measured on the 2-core machine (quiet, workqueue layer, float32): a parallel launch costs about 0.07 ms more
# than a serial call, so the parallel copy of a depthwise kernel only breaks even near 4-5 million
# multiply-adds (8x14x14x384) and wins from about 10 million (8x28x28x192: 0.44 ms against 0.54); the BatchNorm
# passes, which are memory-bound, break even only near 3.6 million elements (8x56x56x144). 2^17 made every
# small layer of a batch-32, 32x32 step 2-3x slower than serial.
# With the OpenMP layer and SciPy's BLAS on one thread (the default, see numpymnv2.kernels._threads) a launch
# costs about 0.004 ms: there 2^16 (measured at batch 16, 96x96, width 0.5: 2^14, 2^16 and 2^18 within the noise
# of each other).
WORKQUEUE_MIN_WORK = 1 << 22
OMP_MIN_WORK = 1 << 16
PARALLEL_MIN_WORK = OMP_MIN_WORK if _threads.split_products() else WORKQUEUE_MIN_WORK


def num_chunks(rows: int, work: int) -> int:
    """Into how many blocks of rows a kernel splits its ``rows`` rows: 1 when it runs serially, else Numba's
    thread count (at most ``rows``)."""
    if work < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(numba.get_num_threads(), rows))


class Kernel:
    """A loop compiled twice, ``parallel=True`` and serial; :meth:`launch` runs one of them.

    Parameters
    ----------
    py_func : function
        The loop, with ``prange`` over the work that may run in parallel.
    name : str
        Its name in Numba's on-disk cache.
    **options
        More Numba options (``fastmath=...``).
    """

    def __init__(self, py_func, name: str, **options):
        # nogil: a kernel running in the calling thread leaves the interpreter to other threads (the background
        # compilation of the parallel copies, see LaterCompiler)
        self.parallel = njit(cache=True, parallel=True, nogil=True, **options)(_renamed(py_func, name))
        self.serial = njit(cache=True, nogil=True, **options)(_renamed(py_func, name + "_serial"))
        self.__name__ = self.__qualname__ = name
        self.__doc__ = py_func.__doc__
        self.ready = set()           # keys (see _key) whose parallel copy LATER has compiled
        self.requested = set()

    def launch(self, work: int, *args):
        """Run the serial copy for less than :data:`PARALLEL_MIN_WORK` elements of work, while other work
        competes for the cores (:mod:`numpymnv2.kernels._contention`) or until :data:`LATER` has compiled the
        parallel copy for these arguments, else the parallel copy holding :data:`LAUNCH_LOCK`. Both copies get the
        same arguments, so the same blocks: which one ran never changes a result."""
        if work < PARALLEL_MIN_WORK or SERIAL_ONLY or _contention.MONITOR.contended():
            return self.serial(*args)
        if LATER.enabled:
            key = _key(args)
            if key not in self.ready:
                out = self.serial(*args)
                LATER.request(self, key, args)
                return out
        with LAUNCH_LOCK:
            return self.parallel(*args)


def _key(args) -> str:
    """The dtype of the first array among ``args`` (or in a tuple among them): what tells the signatures of a
    kernel apart in this package. A signature that differs otherwise (an array's layout) still runs correctly:
    the parallel copy then compiles in the calling thread."""
    for a in args:
        for b in (a if isinstance(a, tuple) else (a,)):
            if isinstance(b, np.ndarray):
                return b.dtype.char
    return ""


class LaterCompiler(numba_event.Listener):
    """Compiles parallel copies in a background thread, once no other thread has compiled anything for
    :data:`QUIET` seconds; until then each kernel runs its serial copy.

    With a cold Numba cache the first train step compiles each kernel the step meets; compiling the parallel
    copies as well, with the OpenMP layer where small layers run in parallel too, made the first step of a
    batch-32, 32x32 network take 28-34 s instead of 12 s. Deferred, they compile while the next steps run
    serially (the kernels release the interpreter, so on two cores both go on at once). On only with the OpenMP
    layer chosen by :mod:`numpymnv2.kernels._threads`: under the workqueue layer the parallel copies are few
    (large layers only). A copy that fails to compile leaves its kernel serial and is reported in :meth:`info`.
    """

    def __init__(self, clock=time.perf_counter, sleep=time.sleep):
        self.enabled = False
        self.clock, self.sleep = clock, sleep
        self.jobs = collections.deque()
        self.compiled, self.seconds, self.errors = 0, 0.0, []
        self._compiling = False             # a compilation in progress in the background thread
        self._compiled_at = -1e9            # when the last one ended
        self._active = 0                    # Numba compilations in progress in other threads
        self._last_compile = clock()        # when the last of them ended
        self._wake = threading.Event()
        self._thread = None

    # Numba's compile events (numba.core.event), in the thread that compiles, under Numba's compiler lock (so
    # never two at once): the serial copies the calling thread compiles in its first steps would otherwise wait
    # for a background compilation holding that lock
    def on_start(self, event) -> None:
        if threading.current_thread() is not self._thread:
            self._active += 1

    def on_end(self, event) -> None:
        if threading.current_thread() is not self._thread:
            self._active -= 1
            self._last_compile = self.clock()

    def request(self, kernel: Kernel, key: str, args: tuple) -> None:
        """Queue the parallel copy of ``kernel`` for the signature of ``args`` (once per ``key``)."""
        if key in kernel.requested:
            return
        kernel.requested.add(key)
        try:
            sig = tuple(numba.typeof(a) for a in args)
        except ValueError:              # a type Numba cannot name: compiled in the calling thread, at its next call
            kernel.ready.add(key)
            return
        self.jobs.append((kernel, key, sig))
        if self._thread is None:
            # a daemon: a process that ends leaves a compilation in progress unfinished (Numba writes its cache
            # files whole or not at all)
            self._thread = threading.Thread(target=self.run, name="numpymnv2-compile", daemon=True)
            self._thread.start()
        self._wake.set()

    def run(self, forever: bool = True) -> None:
        """Compile the queued copies; wait for more unless ``forever`` is False."""
        while True:
            while not self.jobs:
                if not forever:
                    return
                self._wake.wait()
                self._wake.clear()
            while self._active > 0 or self.clock() - self._last_compile < QUIET:
                self.sleep(max(QUIET / 4, 0.01))
            self.compile_one()

    def compile_one(self) -> None:
        """Compile the first queued copy (if any)."""
        try:
            kernel, key, sig = self.jobs.popleft()
        except IndexError:              # another thread took it
            return
        start = self.clock()
        self._compiling = True
        try:
            kernel.parallel.compile(sig)
        except Exception as exc:            # the kernel stays serial; info() says why
            self.errors.append(f"{kernel.__name__}{sig}: {type(exc).__name__}: {exc}")
            return
        finally:
            self._compiling, self._compiled_at = False, self.clock()
        self.seconds += self.clock() - start
        self.compiled += 1
        kernel.ready.add(key)

    def busy(self) -> bool:
        """Whether the background thread is compiling, or was within the last contention window: the cores it
        takes are not other work's (see :mod:`numpymnv2.kernels._contention`)."""
        return self._compiling or self.clock() - self._compiled_at < _contention.WINDOW

    def info(self) -> dict:
        return {"enabled": self.enabled, "compiled": self.compiled, "queued": len(self.jobs),
                "seconds": round(self.seconds, 2), "errors": list(self.errors)}


# seconds without a compilation in another thread before the background one starts
QUIET = 1.0
LATER = LaterCompiler()


class _StreamsLeftAlone:
    """Stands in for ``numba.core.errors.ColorShell``, which wraps ``sys.stdout`` and ``sys.stderr`` with colorama
    and puts back what it found while Numba formats an error message (Numba builds such messages all through
    type inference, caught and discarded). From the background thread that swap races with the program's own
    (``contextlib.redirect_stderr``, pytest's capture): the fuzz tests' messages went to the wrong stream. The
    messages are only built into strings there, so nothing needs the wrapped streams."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_details):
        return False


def _enable_later() -> None:
    from numba.core import errors
    if hasattr(errors, "ColorShell"):       # only where colorama is installed
        errors.ColorShell = _StreamsLeftAlone
    LATER.enabled = True
    numba_event.register("numba:compile", LATER)
    _contention.MONITOR.busy_here = LATER.busy


if _threads.split_products() and not numba.config.DISABLE_JIT:
    _enable_later()

# GNU OpenMP does not survive fork(): Numba kills a child of a process that ran a parallel kernel on the OpenMP
# layer as soon as the child launches one ("Terminating: fork() called from a process already using GNU
# OpenMP"). Such a child runs every kernel on its serial copy instead (the same results, on one thread).
SERIAL_ONLY = False


def _after_fork_in_child() -> None:
    global SERIAL_ONLY
    from numba.np.ufunc import parallel
    if getattr(parallel, "_is_initialized", False) and numba.threading_layer() == "omp":
        SERIAL_ONLY = True
        LATER.enabled = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RowsKernel(Kernel):
    """A :func:`parallel_rows` kernel: ``kernel(work, rows, inputs)``."""

    def __call__(self, work: int, rows: int, inputs: tuple) -> None:
        self.launch(work, rows, num_chunks(rows, work), inputs)


class SumsKernel(Kernel):
    """A :func:`per_thread_sums` kernel: ``kernel(work, rows, inputs, shape)`` returns the float64 sum, of shape
    ``shape``, of every row's contribution."""

    def __call__(self, work: int, rows: int, inputs: tuple, shape: tuple) -> np.ndarray:
        partial = np.zeros((num_chunks(rows, work),) + tuple(shape))
        self.launch(work, rows, inputs, partial)
        return partial[0]           # the kernel has added the other threads' sums into it


def _renamed(py_func, name: str, **globals_):
    """A copy of ``py_func`` named ``name`` (and seeing ``globals_`` as extra module globals).

    Numba's on-disk cache is keyed by the function's qualified name and bytecode, not by its compile flags or
    the values of its globals, so every compiled copy needs a name of its own.
    """
    clone = types.FunctionType(py_func.__code__, {**py_func.__globals__, **globals_}, name, py_func.__defaults__,
                               py_func.__closure__)
    clone.__qualname__ = name
    clone.__module__ = py_func.__module__
    clone.__doc__ = py_func.__doc__
    return clone


# Numba checks a cached kernel only against the file its code comes from (this one), but a kernel built from a
# skeleton below also contains its row function from another module; a digest of the package's kernel sources
# in the kernel's name makes any edit of them compile afresh (edits leave the old cache files unused).
_SOURCES_DIGEST = hashlib.sha1(b"".join(path.read_bytes() for path in
                                        sorted(pathlib.Path(__file__).parent.glob("*.py")))).hexdigest()[:10]

# The two skeletons refer to these globals; each kernel gets its own values (see _from_skeleton).
row_function = None
ROWS_PER_FLUSH = 1


def _each_row(rows, n_chunks, inputs):
    """``row_function(inputs, r)`` for ``r`` in ``range(rows)``, thread ``t`` one block of rows."""
    # a prange over blocks rather than over the rows themselves: with the rows in the prange, Numba's parallel
    # copy of the depthwise forward took 1.1-1.3x the CPU time of the same loop written out by hand
    for t in prange(n_chunks):
        for r in range(t * rows // n_chunks, (t + 1) * rows // n_chunks):
            row_function(inputs, r)


def _sum_rows(rows, inputs, partial):
    """``partial[t] += sum of row_function(inputs, r, acc)`` over thread ``t``'s block of the ``rows`` rows, then
    ``partial[0] += partial[t]`` for ``t = 1, 2, ...`` in turn (after the parallel loop, in the calling thread).

    ``acc`` is shaped like ``partial[t]`` in the dtype of ``inputs[0]``; it joins the float64 ``partial[t]``
    every ``ROWS_PER_FLUSH`` rows and at the end of the block.
    """
    n_chunks = partial.shape[0]
    for t in prange(n_chunks):
        acc = np.zeros(partial.shape[1:], dtype=inputs[0].dtype)
        # the flush as a loop over flat views: Numba's array expressions (partial[t] += acc) were 2x slower
        acc_flat, partial_flat = acc.reshape(-1), partial[t].reshape(-1)
        begin, end = t * rows // n_chunks, (t + 1) * rows // n_chunks
        for r in range(begin, end):
            row_function(inputs, r, acc)
            if (r - begin) % ROWS_PER_FLUSH == ROWS_PER_FLUSH - 1 or r == end - 1:
                for k in range(acc_flat.shape[0]):
                    partial_flat[k] += acc_flat[k]
                    acc_flat[k] = 0
    # the sum of the threads' sums, in their order (what partial.sum(axis=0) gave, without its call)
    total = partial[0].reshape(-1)
    for t in range(1, n_chunks):
        block = partial[t].reshape(-1)
        for k in range(total.shape[0]):
            total[k] += block[k]


def _from_skeleton(kind, skeleton, row, bind: dict, options: dict):
    py_row = getattr(row, "py_func", row)     # the Python function behind a Numba dispatcher
    loop = _renamed(skeleton, skeleton.__name__, row_function=row, **bind)
    kernel = kind(loop, f"{py_row.__name__}{skeleton.__name__}_{_SOURCES_DIGEST}", **options)
    kernel.row = row
    kernel.__doc__ = py_row.__doc__
    return kernel


def parallel_rows(row, **options) -> RowsKernel:
    """The kernel ``kernel(work, rows, inputs)`` that runs ``row(inputs, r)`` for every ``r < rows``.

    ``row`` must write only memory that belongs to its row ``r``. ``options`` are Numba options
    (``fastmath=...``).
    """
    return _from_skeleton(RowsKernel, _each_row, row, {}, options)


def per_thread_sums(row, rows_per_flush: int = 1, **options) -> SumsKernel:
    """The kernel ``kernel(work, rows, inputs, shape) -> sums`` that adds ``row(inputs, r, acc)`` over every
    ``r < rows``; ``sums`` is float64 of shape ``shape``.

    ``row`` adds its contribution into ``acc`` (of shape ``shape``, in the dtype of ``inputs[0]``) and may also
    write memory that belongs to its row. ``rows_per_flush`` rows are summed in ``acc`` before it joins the
    thread's float64 partial sum.
    """
    return _from_skeleton(SumsKernel, _sum_rows, row, {"ROWS_PER_FLUSH": int(rows_per_flush)}, options)
