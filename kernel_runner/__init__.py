"""Everything that touches the kernel (standard library + pyelftools).

Entry points (import them from their modules; this package imports nothing eagerly):
- kernel_runner.local.run(case, backend="interp") -> Outcome: one case, one cached worker.
- kernel_runner.pool.KernelPool(jobs, backend, deadline): long-lived workers, run / imap.
- python -m kernel_runner.worker --backend interp: the worker process (one frame each way, or one JSON line).

Inside a worker: netns (private namespace, lo up), topology (fresh loopback pairs), executor
(the events of docs/execution.md), drain (the end of a case), records (what the program saw,
as endpoints), and a backend (backend.py seam: interp_backend, bcc_backend).
"""
