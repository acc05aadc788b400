"""Layouts: a channel slice of a wider layout (a Concat's input written in place) reads and
writes the same floats as the wider layout's channels."""

import numpy as np
import pytest

from sparsejit.kernels.layout import ALIGN_FLOATS, CRITICAL_STRIDE_BYTES, Layout


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 2, 1, 1)])
@pytest.mark.parametrize("align", [1, 16])
def test_channel_slice_is_a_view_of_the_whole(pads, align):
    whole = Layout.padded(7, 5, 6, pads, align=align)
    batch, first, count = 3, 2, 4
    part = whole.in_channel_slice(count)
    assert part.image_stride == whole.image_stride and part.channel_stride == whole.channel_stride
    assert not part.is_plain
    buf = np.zeros(batch * whole.image_stride + ALIGN_FLOATS, np.float32)
    x = np.random.default_rng(0).standard_normal((batch, count, 5, 6)).astype(np.float32)
    offset = first * whole.channel_stride
    part.write(buf[offset:], x)
    got = whole.interior(buf, batch)
    np.testing.assert_array_equal(got[:, first:first + count], x)
    assert not got[:, :first].any() and not got[:, first + count:].any()
    np.testing.assert_array_equal(part.interior(buf[offset:], batch), x)
    # nothing outside the interiors was written: the pads stay zero
    assert np.count_nonzero(buf) == np.count_nonzero(x)


def test_channel_slice_keeps_its_own_image_stride_only_when_asked():
    lay = Layout.padded(3, 7, 7)
    assert lay.image_step == 0 and lay.is_plain
    with pytest.raises(AssertionError):
        Layout(3, 7, 7, image_step=10)  # images closer than one image's floats
    with pytest.raises(AssertionError):
        lay.in_channel_slice(4)  # more channels than the whole has


@pytest.mark.parametrize("height, width, spare", [(32, 32, 1), (64, 64, 1), (16, 64, 1), (56, 56, 0),
                                                  (16, 16, 0), (7, 7, 0), (8, 128, 1)])
def test_planes_a_multiple_of_4_kb_apart_take_a_spare_row(height, width, spare):
    lay = Layout.planes(3, height, width)
    assert lay.rows == height + spare and lay.planes_contiguous
    assert (lay.channel_stride * 4) % CRITICAL_STRIDE_BYTES != 0 or spare == 0
    assert lay.is_plain == (spare == 0)
    # the interior still reads and writes the planes' H x W floats only
    buf = np.full(lay.image_stride * 2, -1.0, np.float32)
    x = np.random.default_rng(height).standard_normal((2, 3, height, width)).astype(np.float32)
    lay.write(buf, x)
    np.testing.assert_array_equal(lay.read(buf, 2), x)
    assert (buf == -1.0).sum() == 2 * lay.image_stride - x.size
