"""Local response normalisation across channels (ONNX LRN): the workload and its pure helpers.

    y[n,c,h,w] = x[n,c,h,w] / (bias + alpha / size * sum_{c' in window(c)} x[n,c',h,w]^2) ^ beta

window(c) = [c - (size-1)//2, c + ceil((size-1)/2)] clipped to [0, C): an even size reaches one
channel further up than down. The generated kernel sums the window's squares directly: the square
roots and the division bound its speed (size 1 runs as fast as size 5), and a running sum (add
the entering channel's square, subtract the leaving one) drifts: on 256 channels of N(0, 1) data
its sums were off by 5.5e-4 relative (direct: 2e-7), and after a loud channel a window of zeros
sums to a rounding residue. The only plan is the vector width; the power has a cheap form for
the betas networks use (`power_form`); other betas have no kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .layout import Layout

# beta -> how the kernel raises t to it: exact square roots and a division. Other betas have no
# kernel (yet): llvm.pow lowers to a powf call, and an object with an external call, loaded into
# MCJIT with the large code model, corrupted the constants of every object loaded after it
# (tests/test_generated_code.py keeps that finding). Those LRNs run in the numpy reference.
POWER_FORMS = {0.5: "sqrt", 0.75: "sqrt_sqrt", 1.0: "identity"}


@dataclass(frozen=True)
class LRNWorkload:
    channels: int
    height: int
    width: int
    size: int
    alpha: float
    beta: float
    bias: float

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width, self.size) < 1:
            raise ValueError(f"LRN needs positive channels, spatial size and window size ({self})")

    @staticmethod
    def from_attrs(shape: tuple[int, ...], attrs: dict[str, Any]) -> LRNWorkload:
        """From an NCHW shape and the imported node's attrs (size, alpha, beta, bias)."""
        _, c, h, w = shape
        return LRNWorkload(c, h, w, int(attrs["size"]), float(attrs["alpha"]), float(attrs["beta"]),
                           float(attrs["bias"]))

    @property
    def before(self) -> int:
        """Channels below c in its window."""
        return (self.size - 1) // 2

    @property
    def after(self) -> int:
        """Channels above c in its window."""
        return self.size // 2

    @property
    def scale(self) -> float:
        """alpha / size, the factor of the window's sum of squares."""
        return self.alpha / self.size

    @property
    def power_form(self) -> str | None:
        """How the kernel raises to beta; None: it cannot."""
        return POWER_FORMS.get(self.beta)

    def window(self, c: int) -> tuple[int, int]:
        """Channels [lo, hi) summed for output channel c."""
        return max(c - self.before, 0), min(c + self.after + 1, self.channels)

    def check_layout(self, layout: Layout, what: str) -> None:
        shape = (layout.channels, layout.height, layout.width)
        if shape != (self.channels, self.height, self.width):
            raise ValueError(f"LRN {what} layout {shape} does not match the workload {self}")
        if layout.phases != 1 or layout.shifts != 1:
            raise ValueError(f"LRN {what} layout must have one phase and one copy: {layout}")


def flat_plane(workload: LRNWorkload, in_layout: Layout, out_layout: Layout) -> bool:
    """True when both layouts hold a channel's rows back to back (no left or right pads): the
    kernel then runs over H*W floats as one row, with one partial vector per channel, not per row."""
    return in_layout.row_stride == workload.width and out_layout.row_stride == workload.width

