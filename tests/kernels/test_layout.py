"""Layouts: a channel slice of a wider layout (a Concat's input written in place) reads and
writes the same floats as the wider layout's channels."""

import numpy as np
import pytest

from sparsejit.kernels.layout import ALIGN_FLOATS, Layout


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
