"""Running commands over several processes or machines launched by ``torchrun``.

Training, evaluation, CRF search and prediction share this machinery (import the modules
directly; this package imports nothing heavy):

- ``context``: joining torchrun's process group (``env://``; NCCL on CUDA, gloo on the CPU),
  this process's :class:`~deeplabv1.distributed.context.DistInfo` and device
  (``cuda:LOCAL_RANK`` or the CPU), and the collectives the commands use (exact sums of
  arrays, gathering and broadcasting Python objects, a timeout for slow ranks).
- ``shard``: the deterministic split of a sorted item list over the ranks.
- ``work``: per-item work over ranks: which items already have complete outputs (resuming
  after a crash), per-rank summaries (processed / failed / skipped, by name) merged and
  written once by rank 0, a record of the settings the outputs were made with, and failing
  every rank together instead of leaving the others waiting.

Without torchrun (no ``WORLD_SIZE`` in the environment, or 1) every function here is a no-op
and the commands run as a single process.
"""
