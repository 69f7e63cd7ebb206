"""Post-processing kernels (docs/design.md §5): a numpy reference, numba CPU and numba CUDA, one contract.

Use them through :mod:`ecm_edge.postprocess` (``localize``, ``localize_batch``). The contract, per video and
kept class, beyond docs/design.md §5:

- Arithmetic is float64 whatever the CAS dtype (OpenCV's float32 interpolation of ``ecm`` mode aside).
  Normalization comes first, on the T snippets of the row.
- Interpolation to ``num_frames`` samples has half-pixel geometry: sample j reads position
  ``(j + 0.5) · step − 0.5``, clamped to ``[0, T − 1]``, value ``a · (1 − f) + b · f``, each operation rounded
  once (no fused multiply-add). ``clean``: exact, in float64, with ``step = T / num_frames``. ``ecm``: what the
  published code's ``cv2.resize`` (INTER_LINEAR) computes on a float32 row, bit for bit: the normalized row
  rounded to float32 (saturating), ``step = 1 / (num_frames / T)``, the position rounded to float32, the
  weights and the value computed in float32 (``reference.interpolate_opencv``). The two differ on rare frames
  whose float64 position lies just below a whole number that float32 rounds it to. The input row of this stage
  is any ``[T]`` score array.
- A frame is in a run at threshold θ when its value is ``≥ θ`` and ``> 0``; thresholds are non-negative and
  strictly ascending.
- A proposal's outer window is ``[max(0, int(s − λ·len)), s − 1] ∪ [e + 1, min(num_frames, int(e + λ·len)) − 1]``
  on the thresholded row, as the published code (Python ``int`` truncation, asymmetric right end).
- Proposals are ordered by threshold, then by start. NMS visits them by score rounded to 2⁻²⁰ (``ranking_key``),
  highest first, with a *stable* sort: scores equal after rounding keep that order. The kernels sum in different
  orders, so their scores differ in the last bits; the rounding turns such near-ties (which the published code
  orders by those bits, through an unstable sort) into ties broken identically everywhere.
- Output: ordered by video, then score descending (stable; equal scores stay by class, then NMS order).

Importing this package needs neither a GPU nor numba-cuda; ``kernels="cuda"`` says what is missing.
"""

from ecm_edge.kernels.detections import (
    DETECTION_DTYPE,
    compare_detections,
    empty_detections,
    make_detections,
    ranking_key,
    sort_detections,
)
from ecm_edge.kernels.params import PostParams

__all__ = ["DETECTION_DTYPE", "PostParams", "compare_detections", "empty_detections", "make_detections",
           "ranking_key", "sort_detections"]
