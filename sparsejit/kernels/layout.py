"""How an activation tensor sits in its buffer: padding, column phases, strides, alignment.

A conv kernel reads its input from a padded buffer so loads need no bounds checks. For a conv
with column stride S the columns are split into S phases (padded column j lives in phase j % S
at position j // S), so every vector load of a strided conv is contiguous. Per image the buffer
holds C channels x `rows` rows x `phases` phase rows of `phase_width` floats. Only the interior
is ever written; pads stay zero from allocation on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

ALIGN_FLOATS = 16  # 64-byte alignment of buffers and rows
# L1 sets repeat every 4 KB (32 KB, 8 ways): planes a multiple of that apart put a tile's slice
# of every input channel into the same few sets, and a 1x1 conv's tile reloads each slice per
# output channel. AMD Zen 4, 10 % density, one thread: 1024 -> 512 on 32 x 32 ran 21 nonzero
# GFLOP/s against 47-57 on 16 x 16 and 8 x 8.
CRITICAL_STRIDE_BYTES = 4096


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Layout:
    channels: int
    height: int
    width: int
    pad_top: int = 0
    pad_left: int = 0
    rows: int = 0  # rows per channel incl. padding (0: height + pad_top)
    phases: int = 1
    phase_width: int = 0  # 0: just wide enough for width + pad_left
    shifts: int = 1  # copies of the image, copy k shifted left by k phase columns
    # floats from one image to the next when the tensor is a channel slice of a wider one (a
    # Concat's part written in place, `in_channel_slice`); 0: the tensor's own images
    image_step: int = 0

    def __post_init__(self) -> None:
        if self.rows == 0:
            object.__setattr__(self, "rows", self.height + self.pad_top)
        min_width = -(-(self.width + self.pad_left) // self.phases)
        if self.phase_width == 0:
            object.__setattr__(self, "phase_width", min_width)
        assert self.rows >= self.height + self.pad_top, self
        assert self.phase_width >= min_width, self
        assert self.image_step == 0 or self.image_step >= self.shifts * self.shift_stride, self

    @staticmethod
    def padded(channels: int, height: int, width: int, pads: tuple[int, int, int, int] = (0, 0, 0, 0),
               phases: int = 1, align: int = 1, shifts: int = 1) -> Layout:
        """A layout with pads (top, left, bottom, right), phase rows rounded up to `align`, and
        `shifts` shifted copies (so a kernel column shift k reads copy k at an aligned address)."""
        top, left, bottom, right = pads
        width_padded = width + left + right
        phase_width = round_up(-(-width_padded // phases), align)
        return Layout(channels, height, width, top, left, height + top + bottom, phases, phase_width,
                      shifts)

    @staticmethod
    def planes(channels: int, height: int, width: int) -> Layout:
        """Unpadded planes, but a plane whose bytes are a multiple of CRITICAL_STRIDE_BYTES
        takes a spare row after it, so that the same position of successive planes does not
        fall into the same L1 sets."""
        spare = 1 if (height * width * 4) % CRITICAL_STRIDE_BYTES == 0 else 0
        return Layout(channels, height, width, rows=height + spare)

    @property
    def planes_contiguous(self) -> bool:
        """Are the channel planes H x W floats without pads (maybe with spare rows after each,
        an image's channels maybe a slice of a wider tensor's)?"""
        return (self.pad_top == 0 and self.pad_left == 0 and self.phases == 1
                and self.phase_width == self.width and self.shifts == 1)

    @property
    def interior_origin(self) -> int:
        """Float offset of element (0, 0, 0) of an image's interior (phases == 1)."""
        return self.pad_top * self.row_stride + self.pad_left

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) around the interior of a phases == 1 layout (right
        includes the row alignment)."""
        return (self.pad_top, self.pad_left, self.rows - self.height - self.pad_top,
                self.row_stride - self.width - self.pad_left)

    @property
    def row_stride(self) -> int:
        return self.phases * self.phase_width

    @property
    def phase_step(self) -> int:
        """Floats from column phase p of a row to phase p + 1."""
        return self.phase_width

    @property
    def channel_stride(self) -> int:
        return self.rows * self.row_stride

    @property
    def shift_stride(self) -> int:
        return round_up(self.channels * self.channel_stride, ALIGN_FLOATS)

    @property
    def image_stride(self) -> int:
        return self.image_step or self.shifts * self.shift_stride

    def in_channel_slice(self, channels: int) -> Layout:
        """The layout of `channels` of this layout's channels, stored in its buffer (from a
        channel on): same rows and pads, its images as far apart as this layout's."""
        assert self.shifts == 1 and 0 < channels <= self.channels, (self, channels)
        return replace(self, channels=channels, image_step=self.image_stride)

    @property
    def is_plain(self) -> bool:
        """True when the interior is the whole buffer: a contiguous NCHW array."""
        return (self.pad_top == 0 and self.pad_left == 0 and self.rows == self.height
                and self.phases == 1 and self.phase_width == self.width and self.shifts == 1
                and self.image_step == 0)

    def element_offset(self, c: int, row: int, col: int) -> int:
        """Float offset (within an image) of padded position (c, row, col)."""
        return (c * self.channel_stride + row * self.row_stride
                + (col % self.phases) * self.phase_width + col // self.phases)

    # -- numpy views ------------------------------------------------------------------------
    def interior(self, flat: np.ndarray, batch: int) -> np.ndarray:
        """A writable (N, C, H, W) view of the interior of a phases == 1 buffer."""
        assert self.phases == 1
        item = flat.itemsize
        start = self.interior_origin
        return np.lib.stride_tricks.as_strided(
            flat[start:], shape=(batch, self.channels, self.height, self.width),
            strides=(self.image_stride * item, self.channel_stride * item, self.row_stride * item, item))

    def write(self, flat: np.ndarray, x: np.ndarray) -> None:
        """Copy NCHW `x` into the buffer (interior only; pads untouched), every shifted copy."""
        if self.shifts == 1:
            self._write_copy(flat, x, self.pad_left)
            return
        item = flat.itemsize
        for k in range(self.shifts):
            # copy k is the image moved left by k phase columns: its own buffer view
            start = k * self.shift_stride
            view = np.lib.stride_tricks.as_strided(
                flat[start:], shape=(len(flat) - start,), strides=(item,))
            self._write_copy(view, x, self.pad_left - k * self.phases)

    def _write_copy(self, flat: np.ndarray, x: np.ndarray, pad_left: int) -> None:
        batch = x.shape[0]
        if self.phases == 1:
            cols = slice(max(0, -pad_left), self.width)
            start = self.pad_top * self.row_stride + max(0, pad_left)
            item = flat.itemsize
            view = np.lib.stride_tricks.as_strided(
                flat[start:], shape=(batch, self.channels, self.height, cols.stop - cols.start),
                strides=(self.image_stride * item, self.channel_stride * item,
                         self.row_stride * item, item))
            view[...] = x[:, :, :, cols]
            return
        item = flat.itemsize
        # view the buffer as (N, C, rows, phase_width, phases): element [.., q, p] is padded col q*S+p
        v5 = np.lib.stride_tricks.as_strided(
            flat, shape=(batch, self.channels, self.rows, self.phase_width, self.phases),
            strides=(self.image_stride * item, self.channel_stride * item, self.row_stride * item,
                     item, self.phase_width * item))
        for p in range(self.phases):
            # padded columns with j % S == p and pad_left <= j < pad_left + width
            first = (p - pad_left) % self.phases  # first interior column index with that phase
            while first + pad_left < 0:  # columns shifted out of this copy
                first += self.phases
            if first >= self.width:
                continue
            count = len(range(first, self.width, self.phases))
            q0 = (first + pad_left) // self.phases
            # strided slices, not fancy indexing: numpy copies them without a gather
            v5[:, :, self.pad_top:self.pad_top + self.height, q0:q0 + count, p] = \
                x[:, :, :, first::self.phases]

    def read(self, flat: np.ndarray, batch: int) -> np.ndarray:
        """The interior as an NCHW view (phases == 1) or copy."""
        if self.phases == 1:
            return self.interior(flat, batch)
        out = np.empty((batch, self.channels, self.height, self.width), np.float32)
        for col in range(self.width):
            j = col + self.pad_left
            base = (j % self.phases) * self.phase_width + j // self.phases
            idx = (base + self.pad_top * self.row_stride
                   + np.arange(self.height)[:, None] * self.row_stride
                   + np.arange(self.channels)[None, :] * self.channel_stride)
            for n in range(batch):
                out[n, :, :, col] = flat[n * self.image_stride + idx].T
        return out


@dataclass(frozen=True)
class PhasePlanes:
    """A padded image split into S x S phase planes, each plane its own channel of a plain
    `layout`: padded position (c, j, i) lives in channel (c * S + j % S) * S + i % S at row
    j // S, column i // S. A conv with strides (S, S) over the padded image is a stride-1 conv
    over these planes (kernels/direct_conv.py: `plane_conv`), so its output plane can run flat.
    The planes hold every source row and column; pads and positions past the padded image are
    never written and stay zero."""

    channels: int
    height: int
    width: int
    pad_top: int
    pad_left: int
    stride: int
    layout: Layout  # channels * stride**2 planes, phases 1

    def __post_init__(self) -> None:
        s, lay = self.stride, self.layout
        assert lay.channels == self.channels * s * s and lay.phases == 1 and lay.shifts == 1, self
        assert lay.pad_top == 0 and lay.pad_left == 0, self
        assert lay.rows * s >= self.height + self.pad_top, self
        assert lay.phase_width * s >= self.width + self.pad_left, self

    # what the repack kernel needs: column phase p of a row is stored `phase_step` floats on
    @property
    def phases(self) -> int:
        return self.stride

    @property
    def shifts(self) -> int:
        return 1

    @property
    def shift_stride(self) -> int:
        return 0

    @property
    def phase_step(self) -> int:
        """Floats from column phase p's plane to phase p + 1's."""
        return self.layout.channel_stride

    @property
    def image_stride(self) -> int:
        return self.layout.image_stride

    def write(self, flat: np.ndarray, x: np.ndarray) -> None:
        """Copy NCHW `x` (C channels) into the planes (source positions only; pads untouched)."""
        s, lay = self.stride, self.layout
        item = flat.itemsize
        # the buffer as (N, C, row phase, column phase, plane rows, plane columns)
        v6 = np.lib.stride_tricks.as_strided(
            flat, shape=(x.shape[0], self.channels, s, s, lay.rows, lay.phase_width),
            strides=(lay.image_stride * item, s * s * lay.channel_stride * item,
                     s * lay.channel_stride * item, lay.channel_stride * item,
                     lay.row_stride * item, item))
        for rp in range(s):
            y0 = (rp - self.pad_top) % s  # first source row with that row phase
            a0 = (y0 + self.pad_top) // s
            rows = len(range(y0, self.height, s))
            for cp in range(s):
                x0 = (cp - self.pad_left) % s
                b0 = (x0 + self.pad_left) // s
                cols = len(range(x0, self.width, s))
                if rows and cols:
                    v6[:, :, rp, cp, a0:a0 + rows, b0:b0 + cols] = x[:, :, y0::s, x0::s]
