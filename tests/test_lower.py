"""Lowering decisions: which kernel each node becomes, views, scratch copies, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import pytest

import sparsejit

from .onnx_helpers import make_model, node_model, run_ort
from .tolerances import assert_close


def compiled_and_checked(model, feeds, threads=1):
    cm = sparsejit.compile(model, threads=threads)
    got = cm.run(feeds)
    for name, want in zip(cm.output_names, run_ort(model, feeds)):
        assert_close(got[name], want, what=name)
    return cm


def kinds(cm) -> dict[str, str]:
    return {info.name: info.kernel for info in cm.layers}


@pytest.mark.parametrize("size, stride", [(9, 2), (14, 2), (10, 3), (7, 2)])
def test_strided_1x1_conv_subsamples_then_runs_flat(size, stride):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 5, size, size)).astype(np.float32)
    w = rng.standard_normal((7, 5, 1, 1)).astype(np.float32) * (rng.random((7, 5, 1, 1)) < 0.3)
    model = node_model("Conv", {"x": x}, {"w": w}, strides=[stride, stride])
    cm = compiled_and_checked(model, {"x": x})
    k = kinds(cm)
    assert k["conv_node:subsample"].startswith("pool subsample")
    assert k["conv_node"].startswith("direct ") and "conv_node:pack" not in k


def _flat_map_size(vector_width: int, pad: int = 1) -> int:
    """A map size whose 3x3 convs run flat on this vector width where the map's tensors have
    `pad` on every side (pads 1: 7 x 7 on 16 lanes, 3 x 3 on 8; pads 2: 7 x 7 and 2 x 2)."""
    from sparsejit.kernels.direct_conv import ConvWorkload, flat_pays, flat_rows
    from sparsejit.kernels.layout import Layout
    for size in (7, 3, 2, 1):
        lay = Layout.padded(1, size, size, (pad,) * 4)
        run = flat_rows(ConvWorkload(1, size, size, 1, (3, 3), pads=(1, 1, 1, 1)), lay, lay, None,
                        vector_width)
        if run is not None and flat_pays(run, vector_width):
            return size
    raise AssertionError(f"no flat map size for {vector_width} lanes")


@pytest.mark.parametrize("batch", [1, 3])
def test_small_maps_share_a_layout_and_their_convs_run_flat(batch):
    """A residual block on a small map (a strided conv into it, 3x3 and 1x1 convs, a strided
    1x1 shortcut added to the 1x1's output, a global pool after): every tensor of the map gets
    the same padded rows, so the stride-1 convs, the 1x1 merged with the subsampled shortcut
    (graph/merge.py) and the strided conv run as flat runs; rows share their side padding
    (a row's right pad is the next row's left: `shared_side_pads`), one float longer than the
    map."""
    from sparsejit import targets
    size = _flat_map_size(targets.host_target().vector_width)
    rng = np.random.default_rng(batch)

    def weight(m, c, k):
        return (rng.standard_normal((m, c, k, k)) * (rng.random((m, c, k, k)) < 0.4)).astype(np.float32)

    x = rng.standard_normal((batch, 6, 2 * size, 2 * size)).astype(np.float32)
    consts = {"w0": weight(8, 6, 3), "w1": weight(8, 8, 3), "w2": weight(12, 8, 1), "ws": weight(12, 6, 1)}
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], name="down", pads=[1, 1, 1, 1], strides=[2, 2]),
             oh.make_node("Relu", ["a"], ["ar"], name="r0"),
             oh.make_node("Conv", ["ar", "w1"], ["b"], name="conv3x3", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["b"], ["br"], name="r1"),
             oh.make_node("Conv", ["br", "w2"], ["c"], name="conv1x1"),
             oh.make_node("Conv", ["x", "ws"], ["s"], name="shortcut", strides=[2, 2]),
             oh.make_node("Add", ["c", "s"], ["d"], name="add"),
             oh.make_node("Relu", ["d"], ["dr"], name="r2"),
             oh.make_node("GlobalAveragePool", ["dr"], ["y"], name="gap")]
    model = make_model(nodes, {"x": x}, ["y", "dr"], consts)
    cm = compiled_and_checked(model, {"x": x})
    flat = {i.name: i.spec.workload.flat_stride for i in cm.lowered().layers if i.spec is not None}
    assert flat["conv3x3"] == flat["conv1x1+shortcut"] == size + 1, flat
    # strided: a flat run too, over its input's phase planes, rows as far apart as the map's
    assert flat["down"] == size + 1 and "down:planes" in kinds(cm), flat
    # no pool reads the map: each channel's interior starts on a vector, channels whole vectors
    # apart (rows added above and below), so the 1x1 conv's flat run loads aligned vectors
    v = targets.host_target().vector_width
    specs = {i.name: i.spec for i in cm.lowered().layers if i.spec is not None}
    merged = specs["conv1x1+shortcut"]
    for layout in (merged.in_layout, merged.out_layout, specs["conv3x3"].in_layout):
        assert layout.interior_origin % v == 0 and layout.channel_stride % v == 0, layout
        assert layout.row_stride == size + 1 and layout.pad_left == 0 and layout.pad_top >= 2


def test_shared_side_pads():
    from sparsejit.lower import aligned_planes, shared_side_pads
    # 3x3 convs' pads: rows of w + 1, a row more above for the first row's left neighbours
    assert shared_side_pads((1, 1, 1, 1)) == (2, 0, 1, 1)
    assert shared_side_pads((2, 2, 2, 2)) == (3, 0, 2, 2)
    assert shared_side_pads((0, 0, 0, 0)) == (0, 0, 0, 0)
    # 7 x 7 on 16 lanes: rows of 8, interior at 2 * 8 = 16, 10 rows = 80 floats per channel
    assert aligned_planes(7, 7, shared_side_pads((1, 1, 1, 1)), 16) == (2, 0, 1, 1)
    # a conv reads such rows from the previous row's last float, which needs a row above
    from sparsejit.kernels.direct_conv import ConvWorkload, origin
    from sparsejit.kernels.layout import Layout
    wl = ConvWorkload(1, 7, 7, 1, (3, 3), pads=(1, 1, 1, 1))
    assert origin(wl, Layout.padded(1, 7, 7, (2, 0, 1, 1))) == 8 - 1
    with pytest.raises(AssertionError):
        origin(wl, Layout.padded(1, 7, 7, (1, 0, 1, 1)))
    with pytest.raises(AssertionError):  # no right padding to stand in for the left
        origin(wl, Layout.padded(1, 7, 7, (2, 0, 1, 0)))


def test_aligned_planes_add_rows_only():
    from sparsejit.lower import aligned_planes
    # 7 x 7 in rows of 9 on 16 lanes: interior at 7 * 9 + 1 = 64, 16 rows = 144 floats
    assert aligned_planes(7, 7, (1, 1, 1, 1), 16) == (7, 1, 2, 1)
    # already aligned: unchanged
    assert aligned_planes(14, 14, (0, 0, 2, 2), 16) == (0, 0, 2, 2)
    # rows of 10 with the interior at an odd column: no number of rows aligns it
    assert aligned_planes(8, 8, (1, 1, 1, 1), 16) == (1, 1, 1, 1)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_small_map_of_pointwise_convs_runs_flat_on_whole_vector_planes(batch):
    """A small map that only 1x1 convs read and write (no 3x3 conv to pad it): its planes get
    rows and columns added after the interior until each is whole vectors long, and the convs
    run flat and aligned, not one row per vector."""
    from sparsejit import targets
    from sparsejit.lower import compact_aligned_pads
    v = targets.host_target().vector_width
    size = _flat_map_size(v)
    rng = np.random.default_rng(7 + batch)
    x = rng.standard_normal((batch, 5, size, size)).astype(np.float32)
    consts = {"w1": _sparse(rng, (9, 5, 1, 1)), "w2": _sparse(rng, (6, 9, 1, 1))}
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"], name="pw1"),
             oh.make_node("Relu", ["a"], ["ar"], name="r1"),
             oh.make_node("Conv", ["ar", "w2"], ["y"], name="pw2")]
    cm = compiled_and_checked(make_model(nodes, {"x": x}, ["y"], consts), {"x": x})
    pads = compact_aligned_pads(size, size, v)
    assert pads[:2] == (0, 0) and (size + pads[2]) * (size + pads[3]) % v == 0
    for info in cm.lowered().layers:
        if info.spec is not None:
            assert info.spec.workload.flat_stride == size + pads[3], info.spec.workload
            for layout in (info.spec.in_layout, info.spec.out_layout):
                assert layout.channel_stride % v == 0 and layout.pads == pads, layout


def test_compact_aligned_pads():
    from sparsejit.lower import compact_aligned_pads
    assert compact_aligned_pads(7, 7, 16) == (0, 0, 1, 1)  # 8 rows of 8: run of 55, 4 vectors
    assert compact_aligned_pads(7, 7, 8) == (0, 0, 1, 0)  # 8 rows of 7: run of 49, 7 vectors
    assert compact_aligned_pads(14, 14, 16) == (0, 0, 2, 0)


def test_a_small_map_that_a_pool_reads_keeps_its_planes():
    """Windowed pools ran slower over aligned planes (GoogLeNet's 7 x 7 inception pools): a map
    a MaxPool reads keeps the plain padded rows; the answer is the same."""
    from sparsejit import targets
    size = _flat_map_size(targets.host_target().vector_width)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 8, size, size)).astype(np.float32)
    w1 = (rng.standard_normal((8, 8, 3, 3)) * (rng.random((8, 8, 3, 3)) < 0.4)).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 1, 1)) * (rng.random((8, 8, 1, 1)) < 0.4)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"], name="conv3x3", pads=[1, 1, 1, 1]),
             oh.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["p", "w2"], ["y"], name="conv1x1")]
    cm = compiled_and_checked(make_model(nodes, {"x": x}, ["y"], {"w1": w1, "w2": w2}), {"x": x})
    spec = next(i.spec for i in cm.lowered().layers if i.name == "conv1x1")
    assert spec.in_layout.pad_top == 1 and spec.workload.flat_stride == size + 2


def test_concat_copies_into_the_output_and_flatten_is_a_view():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
             oh.make_node("Concat", ["a", "b", "a"], ["cat"], name="cat", axis=1),
             oh.make_node("Flatten", ["cat"], ["flat"], name="flat"),
             oh.make_node("Relu", ["flat"], ["y"], name="relu")]
    model = make_model(nodes, {"x": x}, ["y", "cat"], {"w1": w1, "w2": w2})
    cm = compiled_and_checked(model, {"x": x})
    k = kinds(cm)
    # a repeated input ("a" twice) keeps the numpy Concat; distinct inputs get repack copies
    assert k["cat"] == "reference (numpy)"
    model = make_model(nodes[:2] + [oh.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1)]
                       + nodes[3:], {"x": x}, ["y", "cat"], {"w1": w1, "w2": w2})
    cm = compiled_and_checked(model, {"x": x}, threads=2)
    k = kinds(cm)
    assert k["cat:in0"].startswith("repack") and k["cat:in1"].startswith("repack")
    assert k["flat"] == "view (no copy)"


def _sparse(rng, shape, density=0.5):
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


@pytest.mark.parametrize("batch, threads", [(1, 1), (3, 2)])
def test_concat_inputs_are_written_in_place(batch, threads):
    """Producers write a Concat's inputs straight into its channels: no copies, the Concat
    takes its inputs' aligned rows, and a 3x3 conv reading the Concat gets its pads. One input
    also feeds another conv; 3 + 5 + 4 channels make offsets that are not powers of two. A
    10 x 16 map: its planes run as aligned rows on 4, 8 and 16 lanes (on a map whose convs run
    flat, planes a pool also reads keep unaligned lengths and the Concat's inputs are copied:
    9 x 11 on 8 lanes), 12 rows of 24 or 32 floats, so every channel starts 64-byte aligned."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((batch, 3, 10, 16)).astype(np.float32)
    ws = {"wa": _sparse(rng, (3, 3, 3, 3)), "wb": _sparse(rng, (5, 3, 1, 1)),
          "wq": _sparse(rng, (4, 3, 1, 1)), "wc": _sparse(rng, (6, 12, 3, 3)),
          "wd": _sparse(rng, (2, 5, 1, 1))}
    nodes = [oh.make_node("Conv", ["x", "wa"], ["a"], name="ca", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["a"], ["ar"], name="relu_a"),
             oh.make_node("Conv", ["x", "wb"], ["b"], name="cb"),
             oh.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["p", "wq"], ["q"], name="cq"),
             oh.make_node("Concat", ["ar", "b", "q"], ["cat0"], name="cat", axis=1),
             oh.make_node("Conv", ["cat0", "wc"], ["y"], name="cy", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["b", "wd"], ["z"], name="cz")]
    model = make_model(nodes, {"x": x}, ["y", "z"], ws)
    cm = compiled_and_checked(model, {"x": x}, threads=threads)
    k = kinds(cm)
    assert k["cat"] == "in place (no copy)" and not any(n.startswith("cat:") for n in k), k
    prog = cm.program(batch)
    whole = prog.layouts["cat0"]
    assert whole.pad_top >= 1 and whole.pad_left >= 1  # what cy needs
    stride = whole.channel_stride
    assert prog.offsets == {"ar": 0, "b": 3 * stride, "q": 8 * stride}
    assert all(prog.layouts[t].image_stride == whole.image_stride for t in prog.offsets)
    assert {prog.slot_of[t] for t in ("ar", "b", "q", "cat0")} == {prog.slot_of["cat0"]}


def test_concat_copies_the_inputs_it_cannot_hold():
    """A graph input, and an input whose first channel would not start on a vector boundary
    (a plain 5 x 5 map: 25 floats per channel), are copied; the others are written in place."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    nodes = [oh.make_node("MaxPool", ["x"], ["p1"], name="p1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("MaxPool", ["x"], ["p2"], name="p2", kernel_shape=[1, 1]),
             oh.make_node("Concat", ["p1", "p2", "x"], ["cat0"], name="cat", axis=1),
             oh.make_node("MaxPool", ["cat0"], ["y"], name="py", kernel_shape=[2, 2])]
    model = make_model(nodes, {"x": x}, ["y"], {})
    cm = compiled_and_checked(model, {"x": x})
    k = kinds(cm)
    assert "cat:in0" not in k and k["cat:in1"].startswith("repack") and k["cat:in2"].startswith("repack"), k
    assert cm.program(1).offsets == {"p1": 0}


def test_a_concat_buffer_lives_from_its_first_input_on():
    """The Concat's first input is written long before the second; tensors computed in between
    have the Concat's layout and must not take its buffer."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    w = _sparse(rng, (8, 8, 1, 1))
    wh = _sparse(rng, (4, 8, 1, 1))
    nodes = [oh.make_node("Conv", ["x", "wh"], ["a"], name="ca"),
             oh.make_node("Conv", ["x", "w"], ["c1"], name="c1"),
             oh.make_node("Conv", ["c1", "w"], ["c2"], name="c2"),
             oh.make_node("Conv", ["c2", "w"], ["c3"], name="c3"),
             oh.make_node("Conv", ["c3", "wh"], ["b"], name="cb"),
             oh.make_node("Concat", ["a", "b"], ["cat0"], name="cat", axis=1),
             oh.make_node("Conv", ["cat0", "w"], ["y"], name="cy")]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w, "wh": wh})
    cm = compiled_and_checked(model, {"x": x})
    prog = cm.program(1)
    assert kinds(cm)["cat"] == "in place (no copy)"
    assert prog.layouts["c2"] == prog.layouts["cat0"]  # the same key: a slot could be shared
    assert prog.slot_of["cat0"] not in {prog.slot_of[t] for t in ("c1", "c2", "c3")}


@pytest.mark.parametrize("seed", range(8))
def test_concat_in_place_randomized(seed):
    """Random inception-like blocks: 2-4 branches (1x1, 3x3, 5x5 convs, a 3x3 max pool then a
    1x1 conv) of 1-9 channels on odd maps, joined by a Concat that a 3x3 conv, a max pool or the
    graph output reads; batch 1-3, 1-2 threads: the same answer as onnxruntime."""
    rng = np.random.default_rng(100 + seed)
    batch, threads = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    c_in, size = int(rng.integers(1, 6)), int(rng.choice([5, 7, 9, 13, 15, 17]))
    x = rng.standard_normal((batch, c_in, size, size)).astype(np.float32)
    nodes, consts, parts, total = [], {}, [], 0
    for b in range(int(rng.integers(2, 5))):
        c = int(rng.integers(1, 10))
        kind = rng.choice(["1x1", "3x3", "5x5", "pool"])
        src = "x"
        if kind == "pool":
            nodes.append(oh.make_node("MaxPool", ["x"], [f"p{b}"], name=f"pool{b}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            src, k = f"p{b}", 1
        else:
            k = {"1x1": 1, "3x3": 3, "5x5": 5}[str(kind)]
        consts[f"w{b}"] = _sparse(rng, (c, c_in, k, k), float(rng.choice([0.3, 1.0])))
        nodes.append(oh.make_node("Conv", [src, f"w{b}"], [f"b{b}"], name=f"conv{b}",
                                  pads=[k // 2] * 4))
        parts.append(f"b{b}")
        total += c
    nodes.append(oh.make_node("Concat", parts, ["cat0"], name="cat", axis=1))
    reader = rng.choice(["conv", "pool", "output"])
    if reader == "conv":
        consts["wy"] = _sparse(rng, (3, total, 3, 3))
        nodes.append(oh.make_node("Conv", ["cat0", "wy"], ["y"], name="cy", pads=[1, 1, 1, 1]))
        outputs = ["y"]
    elif reader == "pool":
        nodes.append(oh.make_node("MaxPool", ["cat0"], ["y"], name="py", kernel_shape=[2, 2],
                                  strides=[2, 2]))
        outputs = ["y"]
    else:
        outputs = ["cat0"]
    model = make_model(nodes, {"x": x}, outputs, consts)
    cm = compiled_and_checked(model, {"x": x}, threads=threads)
    # each input is either written in place or copied by a repack of its own
    in_place, k = cm.program(batch).offsets, kinds(cm)
    for i, part in enumerate(parts):
        assert (part in in_place) != (f"cat:in{i}" in k), (part, in_place, k)
    assert ("cat" in k) == all(part in in_place for part in parts)


def test_a_view_keeps_its_base_buffer_alive():
    """flat = Flatten(p) is read after p's last direct reader: p's buffer must not be reused
    by tensors computed in between."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)  # 1x1: unpadded, same-size buffers
    nodes = [oh.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Flatten", ["p"], ["flat"], name="flat"),
             oh.make_node("Conv", ["p", "w"], ["c1"], name="c1"),
             oh.make_node("Conv", ["c1", "w"], ["c2"], name="c2"),
             oh.make_node("Conv", ["c2", "w"], ["c3"], name="c3"),
             oh.make_node("Flatten", ["c3"], ["f3"], name="f3"),
             oh.make_node("Add", ["flat", "f3"], ["y"], name="add")]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w})
    cm = compiled_and_checked(model, {"x": x})
    assert kinds(cm)["flat"] == "view (no copy)"


def test_pointwise_conv_inputs_get_vector_aligned_rows_unless_viewed():
    """Rows of a tensor only 1x1 convs read are rounded up to the vector (so each load of the
    conv is aligned) on maps whose planes are not whole vectors (else they are plain: see
    the next test), except a plain tensor a Flatten views (the view needs no copy)."""
    from sparsejit import targets
    v = targets.host_target().vector_width
    size = 2 * v - 2  # not a multiple of the vector; rows nearly whole vectors: flat would not pay
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, size, size)).astype(np.float32)
    w = (rng.standard_normal((4, 4, 1, 1)) * (rng.random((4, 4, 1, 1)) < 0.5)).astype(np.float32)
    nodes = [oh.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[1, 1]),
             oh.make_node("Conv", ["p", "w"], ["c1"], name="c1"),
             oh.make_node("Conv", ["c1", "w"], ["c2"], name="c2"),
             oh.make_node("Flatten", ["c2"], ["f"], name="flat"),
             oh.make_node("Conv", ["c2", "w"], ["c3"], name="c3")]
    model = make_model(nodes, {"x": x}, ["c3", "f"], {"w": w})
    cm = compiled_and_checked(model, {"x": x})
    layouts = cm.lowered().layouts
    assert layouts["p"].row_stride % v == 0 and layouts["c1"].row_stride % v == 0
    assert layouts["c2"].is_plain  # viewed by the Flatten
    assert kinds(cm)["flat"] == "view (no copy)"


def _bottleneck(batch: int, height: int, width: int):
    """A bottleneck block (1x1 8 -> 4, 3x3, 1x1 4 -> 8 plus the block's input, ReLUs) and a 1x1
    conv after it: the input and the model. Tensors: p (the block's input), a, b, c (its output)."""
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 8, height, width)).astype(np.float32)
    consts = {"w1": _sparse(rng, (4, 8, 1, 1)), "w2": _sparse(rng, (4, 4, 3, 3)),
              "w3": _sparse(rng, (8, 4, 1, 1)), "w4": _sparse(rng, (5, 8, 1, 1))}
    nodes = [oh.make_node("Relu", ["x"], ["p"], name="in_relu"),
             oh.make_node("Conv", ["p", "w1"], ["a0"], name="c1"),
             oh.make_node("Relu", ["a0"], ["a"], name="r1"),
             oh.make_node("Conv", ["a", "w2"], ["b0"], name="c2", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["b0"], ["b"], name="r2"),
             oh.make_node("Conv", ["b", "w3"], ["c0"], name="c3"),
             oh.make_node("Add", ["c0", "p"], ["c1s"], name="add"),
             oh.make_node("Relu", ["c1s"], ["c"], name="r3"),
             oh.make_node("Conv", ["c", "w4"], ["y"], name="c4")]
    return x, make_model(nodes, {"x": x}, ["y"], consts)


@pytest.mark.parametrize("batch, threads", [(1, 1), (3, 2)])
@pytest.mark.parametrize("shape", ["square", "wide"])
def test_a_bottleneck_keeps_pointwise_read_planes_plain(shape, batch, threads):
    """A bottleneck block (1x1, 3x3, 1x1 with the block's input added) on a map whose planes
    are whole vectors and rows at least one: the tensors only 1x1 convs read (the block's input,
    the 3x3's output, the block's output) are plain, so each 1x1 conv runs one flat run per
    plane; the first stores it into the 3x3 conv's padded rows (split stores), the last reads
    and writes plain planes, its residual too."""
    from sparsejit import targets
    from sparsejit.kernels.direct_conv import split_output_rows
    v = targets.host_target().vector_width
    # (rows two vectors wide, less 4 floats: no flat 3x3 run would pay, `narrow_map_pads`)
    height, width = (v, v) if shape == "square" else (4, 2 * v - 4)
    x, model = _bottleneck(batch, height, width)
    cm = compiled_and_checked(model, {"x": x}, threads=threads)
    prog = cm.lowered()
    assert all(prog.layouts[t].is_plain for t in ("p", "b", "c")), prog.layouts
    assert not prog.layouts["a"].is_plain
    specs = {info.name: info.spec for info in prog.layers if info.spec is not None}
    first = specs["c1"]
    assert first.workload.width == height * width and first.out_layout == prog.layouts["a"]
    assert split_output_rows(first.workload, first.out_layout) == width
    last = next(spec for name, spec in specs.items() if name.startswith("c3"))
    assert last.workload.width == height * width and last.residual is not None
    assert split_output_rows(last.workload, last.out_layout) == 0


@pytest.mark.parametrize("batch, threads", [(1, 1), (3, 2)])
def test_planes_4_kb_apart_take_a_spare_row_and_still_run_flat(batch, threads):
    """On a 32 x 32 map a plane is 4 KB: the pointwise-read tensors (the block's input, the 3x3
    conv's output, the block's output) take a spare row after
    each plane, so that a tile's slices of successive channels do not share L1 sets, and the
    1x1 convs still run one flat run per plane, their residual too."""
    from sparsejit.kernels.layout import CRITICAL_STRIDE_BYTES
    x, model = _bottleneck(batch, 32, 32)
    cm = compiled_and_checked(model, {"x": x}, threads=threads)
    prog = cm.lowered()
    for t in ("p", "b", "c"):
        lay = prog.layouts[t]
        assert lay.rows == 33 and lay.planes_contiguous, (t, lay)
        assert (lay.channel_stride * 4) % CRITICAL_STRIDE_BYTES != 0
    specs = {info.name: info.spec for info in prog.layers if info.spec is not None}
    last = next(spec for name, spec in specs.items() if name.startswith("c3"))
    assert last.workload.width == 32 * 32 and last.residual is not None
    assert last.in_layout.row_stride == 33 * 32 and last.residual.row_stride == 33 * 32
    assert specs["c4"].workload.width == 32 * 32


def _plane_case(kernel: int, stride: int, out: int, pads: int, density: float, seed: int):
    """A strided conv with an out x out output, input sized for it, weights at `density`."""
    rng = np.random.default_rng(seed)
    size = (out - 1) * stride + kernel - 2 * pads
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    w = rng.standard_normal((12, 3, kernel, kernel)).astype(np.float32)
    w *= rng.random(w.shape) < density
    return x, w


@pytest.mark.parametrize("kernel, stride, out, pads, density", [
    (11, 4, 7, 0, 1.0),  # CaffeNet conv1's kernel and stride on a small image
    (3, 2, 7, 1, 0.1),  # ResNet-50 layer4.0.conv2
    (3, 2, 7, 1, 0.0),
    (5, 3, 5, 2, 0.3),
    (4, 2, 6, 1, 1.0),  # kernel a multiple of the stride: no padded taps
])
@pytest.mark.parametrize("threads", [1, 2])
def test_strided_conv_runs_flat_over_its_phase_planes(kernel, stride, out, pads, density, threads):
    """A strided conv whose flat run over its input's phase planes saves vectors (16 lanes: a
    7 x 7 output is 4 vectors flat, 7 as rows) repacks into planes, runs flat, and its output
    (a graph output, read by no conv) gets rows as long as a plane row."""
    x, w = _plane_case(kernel, stride, out, pads, density, seed=kernel + out)
    model = node_model("Conv", {"x": x}, {"w": w}, strides=[stride, stride], pads=[pads] * 4)
    cm = compiled_and_checked(model, {"x": x}, threads=threads)
    k = kinds(cm)
    if cm.target.vector_width != 16:
        return  # 7 x 7 on 8 lanes is 7 vectors either way: planes do not pay (checked below)
    assert k["conv_node:planes"].startswith(f"repack planes{stride}"), k
    assert "conv_node:pack" not in k


def test_phase_planes_only_where_they_save_vectors():
    """A 14 x 14 output is one vector per row either way: the column-phase pack stays."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 8, 28, 28)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * (rng.random((8, 8, 3, 3)) < 0.2)
    model = node_model("Conv", {"x": x}, {"w": w}, strides=[2, 2], pads=[1, 1, 1, 1])
    k = kinds(compiled_and_checked(model, {"x": x}))
    assert "conv_node:planes" not in k and k["conv_node:pack"].startswith("repack p2"), k


def test_aligned_copies_on_a_flat_run_is_a_clear_error():
    """Shifted input copies need row tiles: asked for on a conv that runs flat (a small map, or
    a strided conv over its phase planes) the plan is refused, naming the layer, instead of
    computing wrong answers."""
    from sparsejit import targets
    from sparsejit.errors import InvalidPlanError
    size = _flat_map_size(targets.host_target().vector_width)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 8, size, size)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * (rng.random((8, 8, 3, 3)) < 0.3)
    flat = node_model("Conv", {"x": x}, {"w": w}, pads=[1, 1, 1, 1])
    assert sparsejit.compile(flat).lowered().layers[0].spec.workload.flat_stride
    with pytest.raises(InvalidPlanError, match="conv_node.*aligned_copies needs row tiles"):
        sparsejit.compile(flat, plans={"conv_node": {"form": "table", "aligned_copies": True}})
    xs, ws = _plane_case(11, 4, 4, 0, 1.0, seed=1)  # 4 x 4 outputs: flat on 8 and 16 lanes
    planes = node_model("Conv", {"x": xs}, {"w": ws}, strides=[4, 4])
    assert sparsejit.compile(planes).lowered().layers[-1].spec.workload.flat_stride
    with pytest.raises(InvalidPlanError, match="conv_node"):
        sparsejit.compile(planes, plans={"conv_node": {"form": "table", "aligned_copies": True}})


@pytest.mark.parametrize("trans_b, alpha, beta", [(1, 1.0, 1.0), (0, 1.0, 1.0), (1, 0.5, 2.0),
                                                  (0, -3.0, 0.0)])
def test_dense_fc_folds_gemm_alpha_beta_and_trans_b(trans_b, alpha, beta):
    """A dense Gemm with constant weights runs on the packed dense-fc kernel; alpha scales W
    (without a copy only when it is 1) and beta the bias, in both weight orientations."""
    rng = np.random.default_rng(trans_b * 10 + int(abs(alpha)))
    x = rng.standard_normal((3, 37)).astype(np.float32)
    w = rng.standard_normal((70, 37) if trans_b else (37, 70)).astype(np.float32)
    c = rng.standard_normal(70).astype(np.float32)
    model = node_model("Gemm", {"x": x}, {"w": w, "c": c}, transB=trans_b, alpha=alpha, beta=beta)
    cm = compiled_and_checked(model, {"x": x})
    assert kinds(cm)["gemm_node"].startswith("dense-fc ")


@pytest.mark.parametrize("target", ["sse", "avx2", "avx512"])
@pytest.mark.parametrize("batch", [1, 3, 8, 11])
def test_dense_fc_takes_a_batch_in_one_pass_where_registers_allow(batch, target):
    """A dense FC streams W once per tile of rows: up to 8 rows on 32 registers, 4 on 16; a
    batch that is not a multiple of the tile ends in a partial one (batch 11 on 8 rows)."""
    from sparsejit import targets
    from sparsejit.kernels import select
    tgt = targets.get(target)
    if not targets.can_run(tgt):
        pytest.skip(f"the host cannot run {target} code")
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 45)).astype(np.float32)
    w = rng.standard_normal((70, 45)).astype(np.float32)
    model = node_model("Gemm", {"x": x}, {"w": w}, transB=1)
    cm = sparsejit.compile(model, target=target)
    assert_close(cm(x), run_ort(model, {"x": x})[0], what=f"dense fc, batch {batch}, {target}")
    rows = min(batch, select.GEMM_MAX_ROWS[tgt.vector_registers])
    assert f"_r{rows}x" in kinds(cm)["gemm_node"], kinds(cm)


def _residual_block(rng, batch):
    """y = relu(conv1x1(relu(conv3x3(x))) + s), s = conv3x3(x) (a 1x1 would merge into the
    other 1x1, graph/merge.py)."""
    x = rng.standard_normal((batch, 8, 9, 11)).astype(np.float32)
    consts = {"w1": _sparse(rng, (8, 8, 3, 3)), "w2": _sparse(rng, (8, 8, 1, 1)),
              "ws": _sparse(rng, (8, 8, 3, 3))}
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["a"], ["ar"], name="r1"),
             oh.make_node("Conv", ["x", "ws"], ["s"], name="shortcut", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["ar", "w2"], ["b"], name="c2"),
             oh.make_node("Add", ["b", "s"], ["c"], name="add"),
             oh.make_node("Relu", ["c"], ["y"], name="r2")]
    return make_model(nodes, {"x": x}, ["y"], consts), x


@pytest.mark.parametrize("batch, threads", [(1, 1), (2, 2)])
def test_a_conv_writes_over_its_residual_read_last(batch, threads):
    """A conv that adds a residual in one pass writes its output into the residual's buffer
    (each element is read just before the same element is written), with the same answer."""
    model, x = _residual_block(np.random.default_rng(batch), batch)
    cm = compiled_and_checked(model, {"x": x}, threads=threads)
    program = cm.lowered()
    step = next(s for s in program.steps if getattr(s, "residual", None))
    assert step.residual_in_place and program.slot_of[step.output] == program.slot_of[step.residual]


def test_a_conv_writes_over_a_residual_it_reads_in_passes_but_not_over_its_input():
    rng = np.random.default_rng(5)
    from sparsejit import targets
    from sparsejit.kernels.direct_conv import LANES_WIDTHS
    # in passes over input channels (table and lanes forms, threads dividing channel
    # blocks): the first pass starts from the residual
    forms = ["table"] + (["lanes"] if targets.get("host").vector_width in LANES_WIDTHS else [])
    for form, batch, threads in [(f, b, t) for f in forms for b, t in ((1, 1), (2, 2))]:
        model, x = _residual_block(rng, batch)
        cm = sparsejit.compile(model, threads=threads, plans={"c2": {"form": form, "channel_chunk": 3}})
        assert_close(cm.run({"x": x})["y"], run_ort(model, {"x": x})[0],
                     what=f"y ({form}, {threads} threads)")
        program = cm.lowered()
        step = next(s for s in program.steps if getattr(s, "residual", None))
        assert "_c3" in kinds(cm)["c2"] and form in kinds(cm)["c2"]
        assert program.slot_of[step.output] == program.slot_of[step.residual]
    # a + conv(a): the conv reads a around each output while it writes
    x = rng.standard_normal((1, 8, 9, 11)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["a", "w1"], ["b"], name="c1", pads=[1, 1, 1, 1]),
             oh.make_node("Add", ["b", "a"], ["c"], name="add"),
             oh.make_node("Conv", ["c", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    consts = {f"w{i}": _sparse(rng, (8, 8, 3, 3)) for i in range(3)}  # a, c padded alike
    model = make_model(nodes, {"x": x}, ["y"], consts)
    cm = compiled_and_checked(model, {"x": x})
    program = cm.lowered()
    step = next(s for s in program.steps if getattr(s, "residual", None))
    assert program.slot_of[step.output] != program.slot_of[step.residual]


def test_large_copies_split_across_threads():
    """A strided conv's packed input copy counts each element as COPY_FLOPS when deciding a
    split: a 32 x 40 x 40 pack (51 k elements) is worth two threads, as its conv is."""
    from sparsejit.runtime.steps import NATIVE_MIN_PARALLEL_FLOPS, useful_threads
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 32, 40, 40)).astype(np.float32)
    model = node_model("Conv", {"x": x}, {"w": _sparse(rng, (32, 32, 3, 3), 0.3)},
                       strides=[2, 2], pads=[1, 1, 1, 1])
    cm = compiled_and_checked(model, {"x": x}, threads=2)
    steps = {s.layer: s for s in cm.lowered().steps}
    pack = next(s for name, s in steps.items() if name.endswith((":pack", ":planes")))
    assert pack.flops >= 32 * 40 * 40 * 16
    assert useful_threads(2, pack.flops, pack.units, NATIVE_MIN_PARALLEL_FLOPS) == 2


@pytest.mark.parametrize("kind", ["subsample", "global average"])
def test_pools_that_mostly_copy_split_across_threads(kind):
    """A 1x1 strided max pool (what a strided 1x1 conv's subsample is) and a global average pool
    add little but move their map: split as copies of that size are (128 x 28 x 28: 100 k
    elements in), with the same answer as onnxruntime / numpy."""
    from sparsejit.runtime.steps import NATIVE_MIN_PARALLEL_FLOPS, useful_threads
    x = np.random.default_rng(5).standard_normal((1, 128, 28, 28)).astype(np.float32)
    if kind == "subsample":
        model = node_model("MaxPool", {"x": x}, {}, kernel_shape=[1, 1], strides=[2, 2])
    else:
        model = node_model("GlobalAveragePool", {"x": x}, {})
    cm = compiled_and_checked(model, {"x": x}, threads=2)
    (pool,) = [s for s in cm.lowered().steps if getattr(s, "flops", None) is not None]
    assert useful_threads(2, pool.flops, pool.units, NATIVE_MIN_PARALLEL_FLOPS) == 2


@pytest.mark.parametrize("batch", [1, 2])
def test_rows_sharing_side_pads_serve_wider_and_dilated_kernels(batch):
    """A small map that a 5x5 conv and a dilated 3x3 conv read (pads 2): rows two floats longer
    than the map, each row's left taps reading the previous row's right padding, against
    onnxruntime."""
    from sparsejit import targets
    size = _flat_map_size(targets.host_target().vector_width, pad=2)
    rng = np.random.default_rng(11 + batch)
    x = rng.standard_normal((batch, 6, size, size)).astype(np.float32)
    consts = {"w0": _sparse(rng, (8, 6, 3, 3)), "w1": _sparse(rng, (8, 8, 5, 5)),
              "w2": _sparse(rng, (8, 8, 3, 3)), "w3": _sparse(rng, (5, 8, 1, 1))}
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["a", "w1"], ["b"], name="c5x5", pads=[2, 2, 2, 2]),
             oh.make_node("Conv", ["b", "w2"], ["c"], name="dil", pads=[2, 2, 2, 2],
                          dilations=[2, 2]),
             oh.make_node("Add", ["c", "a"], ["d"], name="add"),
             oh.make_node("Conv", ["d", "w3"], ["y"], name="c1x1")]
    cm = compiled_and_checked(make_model(nodes, {"x": x}, ["y"], consts), {"x": x})
    specs = {i.name: i.spec for i in cm.lowered().layers if i.spec is not None}
    lay = specs["c5x5"].in_layout
    assert lay.pad_left == 0 and lay.row_stride == size + 2, lay


def test_a_large_pointwise_conv_on_two_threads_splits_its_tiles():
    """compile(threads=2) gives a 1x1 conv over a 56 x 56 map a plan split by output tiles
    (kernels/select.py: default_split), with onnxruntime's answer; on one thread, by blocks."""
    rng = np.random.default_rng(56)
    x = rng.standard_normal((1, 24, 56, 56)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], name="pw"),
             oh.make_node("Relu", ["a"], ["b"], name="r"),
             oh.make_node("Conv", ["b", "w1"], ["y"], name="c3", pads=[1, 1, 1, 1])]
    consts = {"w0": _sparse(rng, (40, 24, 1, 1), 0.2), "w1": _sparse(rng, (8, 40, 3, 3), 0.2)}
    model = make_model(nodes, {"x": x}, ["y"], consts)
    two = kinds(compiled_and_checked(model, {"x": x}, threads=2))
    assert two["pw"].endswith("_st") and not two["c3"].endswith("_st")
    assert not kinds(sparsejit.compile(model, threads=1))["pw"].endswith("_st")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel, strides, width", [(3, 1, 13), (1, 1, 9), (3, 2, 17)])
def test_dense_convs_run_the_lanes_form_on_avx512(kernel, strides, width, threads):
    """A dense conv (not an image's first: more than 4 input channels) compiles to the lanes
    form on an AVX-512 host, its 40 output channels in blocks of 16 divided between threads,
    and matches onnxruntime at batch 3; on AVX2 it keeps the table form's blocks."""
    from sparsejit import targets
    rng = np.random.default_rng(kernel * 10 + strides)
    x = rng.standard_normal((3, 24, 11, width)).astype(np.float32)
    w = rng.standard_normal((40, 24, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    model = node_model("Conv", {"x": x}, {"w": w, "b": b}, strides=[strides, strides],
                       pads=[kernel // 2] * 4)
    if targets.can_run(targets.get("avx512")) and targets.host_target().vector_width == 16:
        cm = compiled_and_checked(model, {"x": x}, threads=threads)
        assert kinds(cm)["conv_node"].startswith("direct lanes_v16"), kinds(cm)
    avx2 = sparsejit.compile(model, target="avx2", threads=threads)
    assert "lanes" not in kinds(avx2)["conv_node"]
    assert_close(avx2(x), run_ort(model, {"x": x})[0], what="avx2")
