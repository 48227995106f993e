"""The job layer: the parent side of one job (no Hydra, no strategy names).

* :mod:`distri.job.execute`: resolve the device, choose the launcher (worker pool or ``torchrun`` in place),
  build tiny models, turn failures and interrupts into records;
* :mod:`distri.job.record`: the record, one typed object, serialised once;
* :mod:`distri.job.results`: the results store (``result.json``, ``results.jsonl``, the job-folder lock);
* :mod:`distri.job.wandb_logger`: W&B logging of a record that is already on disk;
* :mod:`distri.job.progress`: rank 0's progress on stderr (a line per phase, a bar of the denoising steps);
* :mod:`distri.job.summary`: the one-screen summary of a job and the end-of-sweep table;
* :mod:`distri.job.environment`: what the job ran on.

What runs on every rank is :mod:`distri.worker`; the launchers are :mod:`distri.launch` (the worker pool) and
:mod:`distri.torchrun`.
"""
