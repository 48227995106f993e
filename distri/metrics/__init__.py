"""Latency statistics and image-quality metrics (PSNR, LPIPS, FID, CLIP score) for parallel diffusion runs.

:mod:`distri.metrics.latency` times pipeline calls; :func:`distri.metrics.compute.compute_metrics` computes every
quality metric of an image set against its references through the real libraries (``python -m distri.metrics``
does the same for folders); :mod:`distri.metrics.job` runs them inside a job.
"""
