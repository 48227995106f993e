"""The cost model: predicted multi-device latency of a strategy before any GPU is rented.

One device's costs come from the dry run of the real architecture (:mod:`distri.dryrun`: meta device, fake
process group): per layer and step, MACs by operator class, bytes read and written, and every collective with
its size and whether the strategy issued it blocking or asynchronously (:mod:`.costs`). Device profiles
(published peaks, efficiencies and a kernel overhead calibrated on single-device latencies only) and link
profiles (alpha-beta with ring factors) turn them into seconds (:mod:`.profiles`, :mod:`.calibrate`,
:mod:`.model`); per-setting costs are packaged or cached (:mod:`.store`).

Library use::

    from distri.predict import predict
    p = predict("sdxl", 2048, 2048, world_size=8, strategy="displaced_patch", device="a100", link="nvlink")
    p.total_s, p.compute_s, p.exposed_comm_s, p.non_split_s

    from analysis.frame import predictions_frame
    predictions_frame([p])        # beside measured records

Command line: ``python -m distri.predict model=sdxl height=2048 width=2048 world_size=1,2,4,8 device=a100
link=nvlink`` (:mod:`.cli`).
"""

from distri.predict.api import predict, predict_table
from distri.predict.model import Prediction

__all__ = ["Prediction", "predict", "predict_table"]
