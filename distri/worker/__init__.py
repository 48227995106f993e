"""What every rank of a job runs (:func:`distri.worker.job.run_job`): load, apply the strategy, warm up,
time, generate and stream images to disk, compare with the single device. Never imports Hydra."""
