"""Lowering a shape-bound graph to a runnable program: kernels chosen, rendered, compiled, scheduled.

Per node: a Conv with constant weights becomes a direct-conv kernel (sparse or dense blocking,
table or unrolled form: see kernels/select.py; an explicit plan, else the tuning log's fastest
plan for its workload, else the default); a Gemm/MatMul with constant weights becomes the
dense FC kernel or, when pruned, the gather kernel (below batch 4) or the direct kernel with the
batch in the vector lanes (between strided copies into and out of its layouts); pools, LRN
(beta 0.5/0.75/1), channel Concats and row Softmaxes become kernels of their own; a
Flatten/Reshape of a contiguous tensor is a view; every other op runs its numpy reference.
Every 4-D activation gets a padded layout wide enough for all the stride-1 convs that read it,
so producers write straight into the buffer those convs read; a strided conv's repack kernel
first copies its input into a private phase-split layout.
Activations are planned by liveness; other float tensors (FC inputs and outputs) get arena
buffers of their own. Runs of kernel steps execute as one call into the schedule driver
(runtime/schedule.py). A loaded program releases what its kernels were generated from.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from . import llvm
from .arrays import count_nonzeros
from .codegen.direct_conv import kernel_symbol as conv_symbol
from .codegen.direct_conv import render_direct_conv
from .codegen.gemm import kernel_symbol as gemm_symbol
from .codegen.gemm import gemm_key, render_gemm
from .codegen.lrn import kernel_symbol as lrn_symbol
from .codegen.lrn import render_lrn
from .codegen.pool import kernel_symbol as pool_symbol
from .codegen.pool import pool_variant, render_pool
from .codegen.render import KernelSource
from .codegen.repack import kernel_symbol as repack_symbol
from .codegen.repack import render_plane_repack, render_repack
from .codegen.repack import variant as repack_variant
from .codegen.schedule import SYMBOL as DRIVER_SYMBOL
from .codegen.schedule import schedule_source
from .codegen.softmax import kernel_symbol as softmax_symbol
from .codegen.softmax import render_softmax
from .codegen.strided_copy import StridedView, render_strided_copy
from .codegen.strided_copy import kernel_symbol as copy_symbol
from .conv_layer import ConvCode, ConvSpec, render_conv
from .errors import InvalidPlanError
from .fc_layer import FcCode, FcSpec, render_fc
from .graph.ir import Graph, Node
from .kernels import select
from .kernels.direct_conv import (ConvWorkload, Epilogue, build_pattern, flat_if_it_pays, input_extent,
                                  output_extent, parallel_units, plane_output_pads, plane_weights,
                                  planes_if_they_pay)
from .kernels.gemm import GemmWorkload, pack_weights
from .kernels.layout import ALIGN_FLOATS, Layout, PhasePlanes
from .kernels.lrn import LRNWorkload
from .kernels.pool import PoolWorkload, pool_lowerable, pool_workload
from .kernels.reference import run_node
from .kernels.sparse_fc import SparseFcWorkload
from .kernels.sparse_fc import choose_plan as choose_fc_plan
from .runtime import steps as st
from .runtime.buffers import Lifetime, plan_buffers
from .runtime.schedule import DriverFn, group
from .targets import Target
from .tune import log as tuning_log


# A copy (a strided conv's packed input, a subsample) counts each element as this many flops
# when deciding whether to split it across threads (runtime/steps.py: useful_threads): it
# moves 8 bytes per element, as long as ~16 FMAs take at the rates here, and the threshold is in
# flops. Counted as 1, ResNet-50's 1.6 MB layer2.0.conv2 pack (0.16 ms) ran on one thread
# (NATIVE_MIN_PARALLEL_FLOPS); split, ResNet-50 1.014x and GoogLeNet 1.006x at batch 1 on two
# threads (paired in-process A/B).
COPY_FLOPS = 16


@dataclass
class LayerInfo:
    """What was generated for one layer: for report(), ir() and asm()."""

    name: str
    op: str
    kernel: str  # variant, e.g. "conv table_v16_r4x1_m1_u2", or "reference"
    in_shape: tuple
    out_shape: tuple
    density: float | None = None
    nonzeros: int | None = None
    code_bytes: int = 0
    source: KernelSource | None = None  # the kernel's IR (rendered on demand), None: numpy
    symbol: str | None = None
    opt: int = 2
    compile_seconds: float = 0.0
    cached: bool = False
    dense_flops: int = 0
    fused: list[str] = field(default_factory=list)
    tuned: bool = False  # the plan came from the tuning log
    workload_key: str | None = None  # conv and pruned FC layers: the tuning log's key
    # conv and row-kernel FC layers: what the kernel was generated from (autotune)
    spec: ConvSpec | FcSpec | None = None

    @property
    def ir(self) -> str | None:
        """The kernel's IR; None for layers without a kernel, and in a loaded program, which
        releases its sources (CompiledModel.ir re-lowers to render them)."""
        return None if self.source is None or not self.source.available else self.source.text

    def release(self) -> None:
        """Forget what the kernel was generated from (its weights, pattern and IR text)."""
        if self.source is not None:
            self.source.release()
        self.spec = None


@dataclass
class Program:
    """Everything needed to run one batch size: steps, buffer plan, layer infos, the code."""

    batch: int
    steps: list[st.Step]
    slot_of: dict[str, int]
    slot_sizes: list[int]
    layouts: dict[str, Layout]
    images: dict[str, int]
    scratch_sizes: dict[str, int]
    flat: dict[str, tuple[int, ...]]  # arena tensors that are not 4-D activations
    aliases: dict[str, tuple[str, tuple[int, ...]]]  # views of other arena tensors
    layers: list[LayerInfo]
    library: llvm.CodeLibrary | None
    inputs: list[str]
    outputs: list[str]
    driver: DriverFn | None = None  # the schedule driver (None when not loaded)
    # tensors in a slot of another's, from a float offset on (a Concat's in-place inputs)
    offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.schedule = group(self.steps)  # runs of native steps, one driver call each

    def new_arena(self) -> st.Arena:
        return st.Arena.allocate(self.batch, self.slot_sizes, self.slot_of, self.layouts,
                                 self.images, self.scratch_sizes, self.flat, self.aliases,
                                 self.offsets)


def _epilogue(node: Node) -> Epilogue:
    act = node.attrs.get("activation", "none")
    return Epilogue(act, float(node.attrs.get("activation_alpha", 0.0)),
                    float(node.attrs.get("clip_min", -np.inf)), float(node.attrs.get("clip_max", np.inf)))


# ops a rectified FC input may pass through and keep its zeros: reshapes move values, and a max
# pool over a ReLU's output is zero wherever its whole window is
_ZERO_KEEPING = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze")


def input_is_rectified(graph: Graph, tensor: str) -> bool:
    """True when `tensor` comes out of a ReLU (or a fused clip at 0: ReLU6), directly or through
    max pools and reshapes, so that many of its values are likely exact zeros."""
    node = graph.producer(tensor)
    while node is not None and node.op in _ZERO_KEEPING:
        node = graph.producer(node.inputs[0])
    if node is None:
        return False
    if node.op == "Relu":
        return True
    act = node.attrs.get("activation")  # fused into the producing kernel (graph/fuse.py)
    return act == "relu" or (act == "clip" and float(node.attrs.get("clip_min", -np.inf)) == 0.0)


def _is_4d_activation(graph: Graph, tensor: str) -> bool:
    v = graph.values.get(tensor)
    return (v is not None and v.const is None and v.shape is not None and len(v.shape) == 4
            and v.dtype == np.float32)


def conv_lowerable(graph: Graph, node: Node) -> bool:
    if node.op != "Conv" or graph.const(node.inputs[1]) is None:
        return False
    if len(node.inputs) > 2 and node.inputs[2] and graph.const(node.inputs[2]) is None:
        return False
    return _is_4d_activation(graph, node.inputs[0]) and graph.const(node.inputs[1]).ndim == 4


def fc_weights(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(W[M][C], bias[M]) when the node is an FC layer with constant weights, else None."""
    x = graph.values.get(node.inputs[0])
    if x is None or x.const is not None or x.shape is None or len(x.shape) != 2:
        return None
    if node.op == "MatMul":
        b = graph.const(node.inputs[1])
        if b is None or b.ndim != 2:
            return None
        return np.ascontiguousarray(b.T, np.float32), np.zeros(b.shape[1], np.float32)
    if node.op != "Gemm" or node.attrs.get("transA", 0):
        return None
    b = graph.const(node.inputs[1])
    if b is None or b.ndim != 2:
        return None
    w = b if node.attrs.get("transB", 0) else b.T
    if node.attrs.get("alpha", 1.0) != 1.0:  # else no copy: VGG-16's fc6 alone is 400 MB
        w = w * np.float32(node.attrs["alpha"])
    m = w.shape[0]
    bias = np.zeros(m, np.float32)
    if len(node.inputs) > 2 and node.inputs[2]:
        c = graph.const(node.inputs[2])
        if c is None or c.size not in (1, m) or (c.ndim == 2 and c.shape[0] != 1):
            return None
        bias = np.broadcast_to(c.reshape(-1) * np.float32(node.attrs.get("beta", 1.0)), (m,))
    return np.ascontiguousarray(w, np.float32), np.ascontiguousarray(bias, np.float32)


def conv_workload(graph: Graph, node: Node) -> ConvWorkload:
    _, c, h, w = graph.value(node.inputs[0]).static_shape()
    weight = graph.const(node.inputs[1])
    return ConvWorkload(c, h, w, weight.shape[0], tuple(weight.shape[2:]),
                        tuple(node.attrs["strides"]), tuple(node.attrs["pads"]),
                        tuple(node.attrs["dilations"]), int(node.attrs["group"]))


def plan_layouts(graph: Graph, order: list[Node], target: Target) -> dict[str, Layout]:
    """A layout per 4-D runtime tensor: pads for every stride-1 conv reading it, and rows
    rounded up to the vector for every conv's input and output. Aligned input rows make every
    load of a pointwise conv vector-aligned (ResNet-50's and GoogLeNet's 1x1 convs on 14 x 14
    and 28 x 28 maps 1.2-1.4x faster than over unpadded rows 14 or 28 floats apart, which
    nearly every load straddled; whole networks 5-6 %, Xeon), and a conv whose output rows are
    aligned stores whole vectors, tails into the padding (no masked stores). A tensor that a
    Flatten or Reshape views and only pointwise convs read stays unpadded: the view then needs
    no copy. So do the tensors that only pointwise convs read on maps whose planes are whole
    vectors (`pointwise_planes`): each such conv runs a plane as one flat run (`flattened`;
    the unpadded planes that pointwise convs once read flat over rows that were not whole
    vectors were faster only on 28 x 28 maps)."""
    v = target.vector_width
    pads: dict[str, list[int]] = {}
    aligned: set[str] = set()
    pointwise_read: set[str] = set()
    for node in order:
        if not conv_lowerable(graph, node):
            continue
        aligned.add(node.outputs[0])
        if node.attrs["strides"][1] == 1:
            t = node.inputs[0]
            cur = pads.setdefault(t, [0, 0, 0, 0])
            pads[t] = [max(a, b) for a, b in zip(cur, node.attrs["pads"])]
            if is_pointwise(conv_workload(graph, node)):
                pointwise_read.add(t)
            else:
                aligned.add(t)
    viewed = {n.inputs[0] for n in order if n.op in ("Flatten", "Reshape")}
    plain_views = {t for t in pointwise_read & viewed if not any(pads[t])}
    aligned = (aligned | pointwise_read) - plain_views
    layouts = {}
    tensors = list(graph.inputs) + [o for n in order for o in n.outputs]
    narrow = narrow_map_pads(graph, order, tensors, pads, v)
    flat_planes = pointwise_planes(graph, order, tensors, pads, narrow, v)
    # a channel Concat's output and inputs take one layout (the pads any of them needs, rows
    # aligned if any has them) so that the inputs can be written in place, into the output's
    # channels (`concat_parts_in_place`): GoogLeNet's inception outputs, which only pools read,
    # would otherwise have unaligned rows that none of their inputs has
    boundary = set(graph.inputs) | set(graph.outputs)
    for node in order:
        if node.op != "Concat" or node.attrs.get("axis") not in (1, -3) or len(node.outputs) != 1:
            continue
        group = [t for t in [node.outputs[0], *node.inputs]
                 if t not in viewed and (t == node.outputs[0] or t not in boundary)]
        shared = {narrow[t] for t in group if t in narrow}
        if len(shared) > 1:
            continue
        if shared:
            narrow.update({t: next(iter(shared)) for t in group})
            continue
        joined = [max(p) for p in zip(*(pads.get(t, (0, 0, 0, 0)) for t in group))]
        pads.update({t: joined for t in group})
        if aligned & set(group):
            aligned.update(group)
    for t in tensors:
        if _is_4d_activation(graph, t):
            _, c, h, w = graph.value(t).static_shape()
            if t in narrow:
                layouts[t] = Layout.padded(c, h, w, narrow[t])
                continue
            if t in flat_planes:
                layouts[t] = Layout.planes(c, h, w)
                continue
            layouts[t] = Layout.padded(c, h, w, tuple(pads.get(t, (0, 0, 0, 0))),
                                       align=v if t in aligned else 1)
    layouts.update(plane_output_layouts(graph, order, layouts, pads, v))
    return layouts


def plane_output_layouts(graph: Graph, order: list[Node], layouts: dict[str, Layout],
                         pads: dict[str, list[int]], v: int) -> dict[str, Layout]:
    """Unaligned rows, as long as a phase plane's, for the outputs of strided convs that then
    run flat over their input's phase planes (kernels/direct_conv.py: planes_if_they_pay) and
    would not on aligned rows: CaffeNet conv1's 55 x 55 output in rows of 57, not 64. Only for
    outputs no conv reads, which keep the aligned rows their loads want."""
    conv_read = {n.inputs[0] for n in order if conv_lowerable(graph, n)}
    found = {}
    for node in order:
        if not conv_lowerable(graph, node) or node.outputs[0] in conv_read:
            continue
        wl, t = conv_workload(graph, node), node.outputs[0]
        if planes_if_they_pay(wl, layouts[t], None, v) is not None:
            continue
        grown = plane_output_pads(wl, tuple(pads.get(t, (0, 0, 0, 0))), v)
        if grown is None:
            continue
        lay = layouts[t]
        narrow = Layout.padded(lay.channels, lay.height, lay.width, grown)
        if planes_if_they_pay(wl, narrow, None, v) is not None:
            found[t] = narrow
    return found


def narrow_map_pads(graph: Graph, order: list[Node], tensors: list[str],
                    pads: dict[str, list[int]], v: int) -> dict[str, tuple[int, ...]]:
    """Pads for the tensors of small maps that convs write or stride-1 convs read, the same for every
    such tensor of one map size (the largest any of those convs needs) and rows not rounded to
    the vector: their convs' input and output rows are then equally far apart and each plane
    runs flat (kernels/direct_conv.py: flat_rows), where a 7 x 7 map would fill 7 vectors of
    16 lanes as rows. Only map sizes where a flat 3x3 conv clearly saves vectors qualify. Rows
    above and below align each channel's plane (`aligned_planes`) unless a pool reads the map."""
    conv_tensors = set()
    for node in order:
        if conv_lowerable(graph, node):
            conv_tensors.add(node.outputs[0])
            if tuple(node.attrs["strides"]) == (1, 1):
                conv_tensors.add(node.inputs[0])
    viewed = {n.inputs[0] for n in order if n.op in ("Flatten", "Reshape")}
    pool_read = {n.inputs[0] for n in order if n.op in ("MaxPool", "AveragePool")}
    by_map: dict[tuple[int, int], list[str]] = {}
    for t in tensors:
        if t in conv_tensors and t not in viewed and _is_4d_activation(graph, t):
            by_map.setdefault(tuple(graph.value(t).static_shape()[2:]), []).append(t)
    narrow = {}
    for (h, w), members in by_map.items():
        group_pads = tuple(max(pads.get(t, (0, 0, 0, 0))[i] for t in members) for i in range(4))
        probe = Layout.padded(1, h, w, group_pads)  # a 3x3 conv from and to this map size
        probe_conv = ConvWorkload(1, h, w, 1, (3, 3), pads=(1, 1, 1, 1))
        if any(group_pads) and flat_if_it_pays(probe_conv, probe, probe, None, v) is not None:
            # windowed pools over aligned planes ran slower (GoogLeNet's 7 x 7 inception pools
            # 0.5-0.9x, not understood; the network 0.985x): such maps keep their planes
            pooled = any(t in pool_read for t in members)
            planes = group_pads if pooled else aligned_planes(h, w, shared_side_pads(group_pads), v)
            narrow.update({t: planes for t in members})
        elif not any(group_pads) and not any(t in pool_read for t in members):
            # only pointwise convs (a 7 x 7 map's 1x1 convs alone, without a 3x3 conv beside
            # them): planes with no pads but whole vectors long, so each runs flat and aligned
            planes = compact_aligned_pads(h, w, v)
            probe = Layout.padded(1, h, w, planes)
            if flat_if_it_pays(ConvWorkload(1, h, w, 1, (1, 1)), probe, probe, None, v):
                narrow.update({t: planes for t in members})
    return narrow


def pointwise_planes(graph: Graph, order: list[Node], tensors: list[str], pads: dict[str, list[int]],
                     narrow: dict[str, tuple[int, ...]], v: int) -> set[str]:
    """Tensors stored as plain NCHW planes because only pointwise convs read them (besides
    strided convs and 1x1 pools (subsamples), which copy what they read, and fused residual
    adds): each such conv then runs its planes as one flat run of whole, aligned vectors
    (`flattened`), on maps whose planes are whole vectors long and rows at least one (56 x 56
    and 28 x 28, on 16 lanes: 196 and 49 vectors where rows rounded up to the vector take 224
    and 56), storing into a 3x3 conv's padded input through split stores where its output
    feeds one. A conv's
    output and its fused residual are plain together or not at all (the flat run reads the
    residual at its own positions), and a channel Concat's output and inputs (written in
    place, as channel slices of the output: `concat_parts_in_place`) likewise. Not for
    tensors a pool or a view reads, nor maps `narrow_map_pads` lays out."""
    readers: dict[str, set[str]] = {}
    together: list[set[str]] = []  # tensors plain together or not at all
    for node in order:
        kind = "other"
        if conv_lowerable(graph, node):
            wl = conv_workload(graph, node)
            kind = ("pointwise" if is_pointwise(wl) else
                    "packed" if wl.strides[1] != 1 or subsampled(wl) is not None else "conv")
            if node.attrs.get("residual"):
                together.append({node.outputs[0], node.attrs["residual"]})
                readers.setdefault(node.attrs["residual"], set()).add("residual")
        elif node.op in ("MaxPool", "AveragePool") and tuple(node.attrs.get("kernel_shape", ())) == (1, 1):
            kind = "packed"  # a subsample (graph/merge.py) reads any layout alike
        elif node.op == "Concat" and node.attrs.get("axis") in (1, -3) and len(node.outputs) == 1:
            kind = "concat"
            together.append({node.outputs[0], *node.inputs} - set(graph.inputs))
        for t in node.inputs[:1] if kind not in ("other", "concat") else node.inputs:
            readers.setdefault(t, set()).add(kind)
    planes = set()
    for t in tensors:
        if (t in graph.inputs or t in narrow or any(pads.get(t, (0, 0, 0, 0)))
                or not readers.get(t) or not _is_4d_activation(graph, t)
                or not readers[t] <= {"pointwise", "packed", "residual", "concat"}):
            continue
        _, _, h, w = graph.value(t).static_shape()
        if w >= v and (h * w) % v == 0:
            planes.add(t)
    changed = True
    while changed:
        changed = False
        for members in together:
            if planes & members and not members <= planes:
                planes -= members
                changed = True
    return planes


def compact_aligned_pads(height: int, width: int, v: int) -> tuple[int, int, int, int]:
    """Pads (0, 0, bottom, right) making an unpadded plane whole vectors long, for the
    shortest flat run over its rows, then the fewest floats: a 7 x 7 plane on 16 lanes as 8
    rows of 8 (a run of 55 positions, 4 vectors, planes 64 floats apart), not 49 floats that
    put most channels off a vector boundary, nor 7 rows of one vector each. AMD Zen 4,
    ResNet-50's 7 x 7 1x1 convs alone (benchmarks/layers.py): see README."""
    def cost(pad):
        bottom, right = pad
        run = (height - 1) * (width + right) + width
        return -(-run // v), (height + bottom) * (width + right), right
    bottom, right = min(((b, r) for b in range(v) for r in range(v)
                         if (height + b) * (width + r) % v == 0), key=cost)
    return 0, 0, bottom, right


def shared_side_pads(pads: tuple[int, ...]) -> tuple[int, int, int, int]:
    """`pads` (top, left, bottom, right) with each row's left padding taken from the previous
    row's right padding: rows `max(left, right)` floats longer than the map, not left + right
    (a row more above gives the first row its left neighbours). A 7 x 7 map in rows of 8, not
    9: its 3x3 conv's taps then fall 0-2 and 8-10 lanes past a vector boundary, not across all
    16, and the frames of shifted sums align 8 of 9 of them (kernels/direct_conv.py:
    shifted_sums_misfit); ResNet-50 layer4.1.conv2 0.484 -> 0.403 ms (`tune.measure`)."""
    top, left, bottom, right = pads
    side = max(left, right)
    return (top + (1 if left else 0), 0, bottom, side) if side else tuple(pads)


def aligned_planes(height: int, width: int, pads: tuple[int, ...], v: int) -> tuple[int, ...]:
    """`pads` with rows added above and below the interior (never to the rows themselves, which
    a flat run needs equally long everywhere) until each channel's interior starts on a vector
    boundary and channels are whole vectors apart, so that a pointwise conv's flat run loads
    and stores aligned vectors; `pads` as they are when no such rows exist. AMD Zen 4,
    ResNet-50's 7 x 7 layers (rows of 9, interior at 10 of 81 floats per channel): 1x1 convs
    1.49-1.51x, the 3x3 conv between them 0.96x (`tune.measure`, interleaved)."""
    top, left, bottom, right = pads
    row = width + left + right
    for extra in range(v):
        if ((top + extra) * row + left) % v == 0:
            top += extra
            break
    else:
        return tuple(pads)
    while (top + height + bottom) * row % v:
        bottom += 1
    return top, left, bottom, right


def is_pointwise(wl: ConvWorkload) -> bool:
    return (wl.kernel == (1, 1) and wl.strides == (1, 1) and wl.pads == (0, 0, 0, 0)
            and wl.dilations == (1, 1))


def pool_split_flops(dense_flops: int, moved: int) -> int:
    """The flops by which a pool's split across threads is decided: its reads, or, where that is
    more, the copy it also is (`moved` elements read and written, half of each counted like a
    copy's element): a 1x1 subsample or a global average pool moves far more than it adds."""
    return max(dense_flops, moved // 2 * COPY_FLOPS)


def subsampled(wl: ConvWorkload) -> ConvWorkload | None:
    """A strided unpadded 1x1 conv as a stride-1 1x1 conv over its input's every stride-th row
    and column (which a subsample kernel copies out first): its output rows are then dense
    vectors (flattened, a 7x7 map is 4 vectors, not 7 rows of 7 lanes), not phase rows."""
    if wl.kernel != (1, 1) or wl.strides == (1, 1) or wl.pads != (0, 0, 0, 0):
        return None
    return ConvWorkload(wl.in_channels, wl.out_height, wl.out_width, wl.out_channels, (1, 1),
                        group=wl.group)


def flattened(wl: ConvWorkload, in_layout: Layout, out_layout: Layout, residual: Layout | None,
              vector_width: int) -> tuple[ConvWorkload, Layout, Layout, Layout | None] | None:
    """A 1x1 conv over unpadded planes is a product over the whole plane: treat H x W as one row
    of H*W pixels, so vectors run across row ends (a 7x7 map fills 4 vectors, not 7 at 7/16).
    Returns (workload, input, output and residual layouts) or None. An output whose rows have
    padding (a 3x3 conv reads it) takes each vector in the row or two it falls in
    (direct_conv.split_output_rows): rows at least a vector wide, no residual."""
    if not (is_pointwise(wl) and in_layout.planes_contiguous):
        return None
    plane = wl.height * wl.width
    flat = ConvWorkload(wl.in_channels, 1, plane, wl.out_channels, (1, 1), group=wl.group)
    flat_in = _as_one_row(in_layout)
    layouts = [out_layout] + ([residual] if residual is not None else [])
    if all(lay.planes_contiguous for lay in layouts):
        flat_out, flat_res = (_as_one_row(lay) if lay is not None else None
                              for lay in (out_layout, residual))
        return flat, flat_in, flat_out, flat_res
    if (residual is None and out_layout.phases == 1 and out_layout.shifts == 1
            and wl.width >= vector_width):
        return flat, flat_in, out_layout, None
    return None


def _as_one_row(layout: Layout) -> Layout:
    """A layout with contiguous planes seen as one row of H * W positions per channel, the
    planes as far apart as before."""
    plane = layout.height * layout.width
    return Layout(layout.channels, 1, plane, phase_width=layout.rows * layout.width,
                  image_step=layout.image_step)


class _Builder:
    """Accumulates steps, IR modules and buffer needs while walking the schedule."""

    def __init__(self, graph: Graph, target: Target, batch: int, overrides: dict[str, dict],
                 threads: int | None = None):
        self.graph, self.target, self.batch, self.overrides = graph, target, batch, overrides
        self.threads = threads  # the model's: tuning-log plans timed with as many are preferred
        self.steps: list[st.Step] = []
        self.layers: list[LayerInfo] = []
        self.kernels: list[LayerInfo] = []
        self.bind: list[tuple[st.Step, str, type]] = []  # steps waiting for a function pointer
        self.scratch: dict[str, int] = {}
        self.extent: dict[str, int] = {}  # tensor -> floats its kernels may touch (over-reads, zero tails)
        self.flat: dict[str, tuple[int, ...]] = {}  # other arena tensors: contiguous, own buffer
        self.aliases: dict[str, tuple[str, tuple[int, ...]]] = {}  # view -> (base, shape)
        self.parts: dict[str, tuple[str, int]] = {}  # Concat input written in place -> (output, offset)

    def images(self, tensor: str) -> int:
        """Dim 0 of a 4-D activation: usually the batch, not always (Gather/Expand on axis 0)."""
        return int(self.graph.value(tensor).static_shape()[0])

    def shape(self, tensor: str) -> tuple:
        v = self.graph.values.get(tensor)
        return tuple(v.shape) if v is not None and v.shape is not None else ()

    def conv(self, node: Node, layouts: dict[str, Layout]) -> None:
        g = self.graph
        wl = conv_workload(g, node)
        weight = np.ascontiguousarray(g.const(node.inputs[1]), np.float32)
        bias = (g.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2]
                else np.zeros(wl.out_channels, np.float32)).astype(np.float32)
        x, y = node.inputs[0], node.outputs[0]
        in_layout, out_layout = layouts[x], layouts[y]
        residual = node.attrs.get("residual")
        res_layout = layouts[residual] if residual else None
        src, density, dense_flops = x, select.density(weight), wl.dense_flops
        sub = subsampled(wl)
        if sub is not None:  # a strided 1x1 conv: subsample first, then a stride-1 1x1 conv
            src = f"{node.name}:subsample"
            packed = Layout.planes(wl.in_channels, sub.height, sub.width)
            if not out_layout.planes_contiguous:  # rows as far apart as the output's: it may run flat
                like_out = Layout.padded(wl.in_channels, sub.height, sub.width, out_layout.pads)
                if flat_if_it_pays(sub, like_out, out_layout, res_layout, self.target.vector_width):
                    packed = like_out
            self.scratch[src] = self.images(x) * packed.image_stride
            self.subsample(src, x, in_layout, packed, wl.strides)
            wl, in_layout = sub, packed
        planar = planes_if_they_pay(wl, out_layout, res_layout, self.target.vector_width)
        if planar is not None:  # a strided conv: its phase planes first, then a flat stride-1 conv
            planes, wl = planar
            weight = plane_weights(weight, planes.stride)
            src = f"{node.name}:planes"
            self.scratch[src] = self.images(x) * planes.image_stride
            self.repack(src, node.op, x, src, in_layout, planes, 0)
            in_layout = planes.layout
        flat = flattened(wl, in_layout, out_layout, res_layout, self.target.vector_width)
        if flat is not None:
            wl, in_layout, out_layout, res_layout = flat
        wl = flat_if_it_pays(wl, in_layout, out_layout, res_layout, self.target.vector_width) or wl
        spec = ConvSpec(node.name, wl, weight, bias, _epilogue(node), in_layout, out_layout,
                        res_layout)
        key = tuning_log.workload_key(wl, weight)
        code, tuned = self._conv_code(spec, key)
        plan, pattern = code.plan, code.pattern
        info = LayerInfo(node.name, node.op, f"direct {plan.variant()}" + (" (tuned)" if tuned else ""),
                         self.shape(x), self.shape(y), density, pattern.nonzeros,
                         symbol=code.symbol, opt=plan.codegen_opt,
                         dense_flops=dense_flops * self.images(x), fused=list(node.fused),
                         tuned=tuned, workload_key=key, spec=spec)
        info.source = code.source
        images = self.images(x)
        floats = code.input_floats(wl, images)
        if code.pack is not None:  # a strided conv reads a phase-split copy: a repack writes it
            self.repack(f"{node.name}:pack", node.op, x, f"{node.name}:pack", layouts[x], code.pack, 0)
            src = f"{node.name}:pack"
            self.scratch[src] = floats
        elif src == x:
            self.extent[x] = max(self.extent.get(x, 0), floats)
        else:
            self.scratch[src] = max(self.scratch[src], floats)
        written = (images - 1) * out_layout.image_stride + output_extent(wl, out_layout, plan.vector_width)
        self.extent[y] = max(self.extent.get(y, 0), written)
        flops = 2 * pattern.nonzeros * wl.out_height * wl.out_width * images
        units = parallel_units(wl, plan, pattern.blocks)
        # both forms read each residual element before first writing the same output element
        # (the table form's passes start from it)
        step = st.ActivationKernel(node.name, src, y, None, units, images, flops, residual,
                                   residual_in_place=True)
        self._add_kernel(step, info, st.ConvFn)

    def repack(self, name: str, op: str, x: str, out: str, src: Layout, dst: Layout | PhasePlanes,
               channel_offset: int) -> None:
        """A kernel copying tensor x (layout src) into `out` (a tensor or a scratch buffer) in
        layout dst, at a channel offset: a strided conv's packed input or phase planes, a
        Concat's input."""
        v, tname, images = self.target.vector_width, self.target.name, self.images(x)
        channels = src.channels
        info = LayerInfo(name, "Repack" if op == "Conv" else op, f"repack {repack_variant(dst, v)}",
                         self.shape(x), self.shape(out) if out in self.graph.values else (),
                         symbol=repack_symbol(name, dst, v))
        if isinstance(dst, PhasePlanes):
            info.source = KernelSource(lambda: render_plane_repack(name, src, dst, v, tname),
                                       "repack planes", name, src, dst, v, tname)
        else:
            info.source = KernelSource(
                lambda: render_repack(name, channels, src, dst, channel_offset, v, tname),
                "repack", name, channels, src, dst, channel_offset, v, tname)
        step = st.ActivationKernel(name, x, out, None, channels, images,
                                   channels * src.height * src.width * images * COPY_FLOPS,
                                   into_scratch=out not in self.graph.values)
        self._add_kernel(step, info, st.ConvFn)

    def subsample(self, name: str, x: str, src: Layout, dst: Layout, strides: tuple[int, int]) -> None:
        """Every strides-th row and column of x into a private plain buffer: a 1x1 max pool."""
        wl = PoolWorkload("max", src.channels, src.height, src.width, (1, 1), strides)
        v, tname, images = self.target.vector_width, self.target.name, self.images(x)
        info = LayerInfo(name, "Subsample", f"pool subsample_v{v}", self.shape(x),
                         (images, dst.channels, dst.height, dst.width), symbol=pool_symbol(name, wl, v, src))
        info.source = KernelSource(lambda: render_pool(name, wl, src, dst, v, tname),
                                   "pool", name, wl, src, dst, v, tname)
        step = st.ActivationKernel(name, x, name, None, src.channels, images,
                                   dst.channels * dst.height * dst.width * images * COPY_FLOPS,
                                   into_scratch=True)
        self._add_kernel(step, info, st.ConvFn)

    def concat(self, node: Node, layouts: dict[str, Layout]) -> None:
        """A repack per input into its channels of the output, but for inputs their producers
        wrote there already (`concat_parts_in_place`); with none left, a step that does no work."""
        y, offset, copied = node.outputs[0], 0, False
        for i, x in enumerate(node.inputs):
            if x not in self.parts:
                self.repack(f"{node.name}:in{i}", node.op, x, y, layouts[x], layouts[y], offset)
                copied = True
            offset += layouts[x].channels
        if not copied:
            self.steps.append(st.Alias(node.name, y))
            self.layers.append(LayerInfo(node.name, node.op, "in place (no copy)",
                                         self.shape(node.inputs[0]), self.shape(y),
                                         fused=list(node.fused)))

    def _conv_code(self, spec: ConvSpec, key: str) -> tuple[ConvCode, bool]:
        """The layer's kernel and whether its plan came from the tuning log. An explicit plan
        (even an empty one: "the default") wins over the log; a log plan that no longer fits
        (hand-edited, or from another sparsejit) is skipped with a warning."""
        name, tgt = spec.name, self.target
        if name not in self.overrides:
            tuned = tuning_log.best(key, tgt, threads=self.threads)
            if tuned is not None:
                try:
                    plan = select.choose_conv(spec.workload, spec.weight, tgt, tuned, name,
                                              spec.in_layout, self.threads or 1, spec.out_layout)
                    return render_conv(spec, plan, tgt), True
                except ValueError as exc:  # InvalidPlanError is one
                    warnings.warn(f"sparsejit: layer '{name}': ignoring the tuned plan {tuned} "
                                  f"from the tuning log ({exc})", stacklevel=2)
        plan = select.choose_conv(spec.workload, spec.weight, tgt, self.overrides.get(name), name,
                                  spec.in_layout, self.threads or 1, spec.out_layout)
        try:
            return render_conv(spec, plan, tgt), False
        except InvalidPlanError:
            raise
        except ValueError as exc:  # a plan this layer cannot run: the user's to change
            raise InvalidPlanError(f"layer '{name}': plan {plan.variant()} cannot run it: {exc}") from None

    def pool(self, node: Node, layouts: dict[str, Layout]) -> None:
        x, y = node.inputs[0], node.outputs[0]
        _, c, h, w = self.graph.value(x).static_shape()
        wl = pool_workload(node, c, h, w)
        in_layout, out_layout, v, tname = layouts[x], layouts[y], self.target.vector_width, self.target.name
        images = self.images(x)
        info = LayerInfo(node.name, node.op, f"pool {pool_variant(wl, v, in_layout)}", self.shape(x),
                         self.shape(y), symbol=pool_symbol(node.name, wl, v, in_layout),
                         dense_flops=c * wl.out_height * wl.out_width * wl.kernel[0] * wl.kernel[1] * images)
        info.source = KernelSource(lambda: render_pool(node.name, wl, in_layout, out_layout, v, tname),
                                   "pool", node.name, wl, in_layout, out_layout, v, tname)
        moved = (c * h * w + c * wl.out_height * wl.out_width) * images
        step = st.ActivationKernel(node.name, x, y, None, c, images, pool_split_flops(info.dense_flops, moved))
        self._add_kernel(step, info, st.ConvFn)

    def lrn(self, node: Node, layouts: dict[str, Layout]) -> None:
        x, y = node.inputs[0], node.outputs[0]
        shape = self.graph.value(x).static_shape()
        wl = LRNWorkload.from_attrs(shape, node.attrs)
        in_layout, out_layout, v, tname = layouts[x], layouts[y], self.target.vector_width, self.target.name
        info = LayerInfo(node.name, node.op, f"lrn v{v}", self.shape(x), self.shape(y),
                         symbol=lrn_symbol(node.name, v))
        info.source = KernelSource(lambda: render_lrn(node.name, wl, in_layout, out_layout, v, tname),
                                   "lrn", node.name, wl, in_layout, out_layout, v, tname)
        flops = int(np.prod(shape)) * (2 * wl.size + 8)
        step = st.ActivationKernel(node.name, x, y, None, wl.channels, self.images(x), flops)
        self._add_kernel(step, info, st.ConvFn)

    def sparse_fc(self, node: Node, weight: np.ndarray, bias: np.ndarray) -> None:
        m, c = weight.shape
        n = self.images(node.inputs[0])
        spec = FcSpec(node.name, SparseFcWorkload(c, m), weight, bias, _epilogue(node))
        key = tuning_log.fc_workload_key(spec.workload, weight)
        code, tuned = self._fc_code(spec, key)
        plan = code.plan
        info = LayerInfo(node.name, node.op,
                         f"sparse-fc {plan.variant()}" + (" (tuned)" if tuned else ""),
                         self.shape(node.inputs[0]), self.shape(node.outputs[0]),
                         select.density(weight), code.tables.nonzeros,
                         symbol=code.symbol, opt=plan.codegen_opt,
                         dense_flops=2 * m * c * n, fused=list(node.fused),
                         tuned=tuned, workload_key=key, spec=spec)
        info.source = code.source
        step = st.FlatKernel(node.name, node.inputs[0], node.outputs[0], None, None, m, n,
                             2 * code.tables.nonzeros * n)
        self._add_kernel(step, info, st.ConvFn)

    def _fc_code(self, spec: FcSpec, key: str) -> tuple[FcCode, bool]:
        """As _conv_code, for a pruned FC run row by row."""
        name, tgt = spec.name, self.target
        if name not in self.overrides:
            tuned = tuning_log.best(key, tgt, threads=self.threads)
            if tuned is not None:
                try:
                    return render_fc(spec, choose_fc_plan(spec.workload, tgt, tuned, name), tgt), True
                except ValueError as exc:  # InvalidPlanError is one
                    warnings.warn(f"sparsejit: layer '{name}': ignoring the tuned plan {tuned} "
                                  f"from the tuning log ({exc})", stacklevel=2)
        plan = choose_fc_plan(spec.workload, tgt, self.overrides.get(name), name)
        try:
            return render_fc(spec, plan, tgt), False
        except InvalidPlanError:
            raise
        except ValueError as exc:
            raise InvalidPlanError(f"layer '{name}': plan {plan.variant()} cannot run it: {exc}") from None

    def batch_lanes_fc(self, node: Node, weight: np.ndarray, bias: np.ndarray) -> None:
        """A pruned FC layer at batch >= 4: X[N][C] copied into a (C, 1, N) layout, the direct
        kernel with the images in the vector lanes, its (M, 1, N) output copied to Y[N][M]."""
        m, c = weight.shape
        x, y = node.inputs[0], node.outputs[0]
        n, v = self.images(x), self.target.vector_width
        wl = ConvWorkload(c, 1, n, m, (1, 1))
        in_layout = Layout.padded(c, 1, n, align=v)
        out_layout = Layout.padded(m, 1, n, align=v)
        plan = select.choose_conv(wl, weight[:, :, None, None], self.target,
                                  self.overrides.get(node.name), node.name)
        pattern = build_pattern(weight[:, :, None, None], wl, in_layout, plan)
        lanes_in, lanes_out = f"{node.name}:lanes_in", f"{node.name}:lanes_out"
        self.scratch[lanes_in] = max(in_layout.image_stride, input_extent(wl, in_layout, plan, pattern))
        self.scratch[lanes_out] = output_extent(wl, out_layout, v)
        self.strided_copy(lanes_in, x, lanes_in, StridedView(0, 1, c),
                          StridedView(in_layout.pad_left, in_layout.channel_stride, 1), c, n)
        info = LayerInfo(node.name, node.op, f"sparse-fc lanes {plan.variant()}",
                         self.shape(x), self.shape(y), select.density(weight), pattern.nonzeros,
                         symbol=conv_symbol(node.name, plan), opt=plan.codegen_opt,
                         dense_flops=2 * m * c * n, fused=list(node.fused))
        epilogue, tname = _epilogue(node), self.target.name
        info.source = KernelSource(
            lambda: render_direct_conv(node.name, wl, plan, pattern, bias, epilogue, in_layout,
                                       out_layout, tname),
            "sparse_fc_lanes", node.name, wl, plan, pattern.digest, bias, epilogue, in_layout,
            out_layout, tname)
        step = st.ActivationKernel(node.name, lanes_in, lanes_out, None, pattern.blocks, 1,
                                   2 * pattern.nonzeros * n, into_scratch=True)
        self._add_kernel(step, info, st.ConvFn)
        self.strided_copy(lanes_out, lanes_out, y,
                          StridedView(out_layout.pad_left, out_layout.channel_stride, 1),
                          StridedView(0, 1, m), m, n)

    def strided_copy(self, name: str, src: str, out: str, src_view: StridedView,
                     dst_view: StridedView, rows: int, cols: int) -> None:
        """A kernel copying `rows` x `cols` floats between two strided views of buffers."""
        tname = self.target.name
        info = LayerInfo(name, "Copy", "strided copy", symbol=copy_symbol(name),
                         in_shape=(rows, cols), out_shape=(rows, cols))
        info.source = KernelSource(lambda: render_strided_copy(name, src_view, dst_view, cols, tname),
                                   "strided_copy", name, src_view, dst_view, cols, tname)
        step = st.ActivationKernel(name, src, out, None, rows, 1, rows * cols,
                                   into_scratch=out not in self.graph.values)
        self._add_kernel(step, info, st.ConvFn)

    def dense_fc(self, node: Node, weight: np.ndarray, bias: np.ndarray) -> None:
        m, c = weight.shape
        n = self.images(node.inputs[0])
        override = self.overrides.get(node.name)
        rectified = (n <= select.SKIP_ZERO_INPUTS_MAX_BATCH
                     and input_is_rectified(self.graph, node.inputs[0]))
        asked = bool(override and override.get("skip_zero_inputs"))
        # skipping zero inputs drops their products, which only a non-finite weight makes
        # other than zero (0 x Inf is NaN): checked only where the plan may skip
        finite = (rectified or asked) and bool(np.isfinite(weight).all())
        plan = select.choose_gemm(self.target, n, override, node.name,
                                  sparse_input=rectified and finite)
        if plan.skip_zero_inputs and not finite:
            raise InvalidPlanError(f"layer '{node.name}': skip_zero_inputs needs finite weights "
                                   f"(a zero input times an Inf or NaN weight is NaN)")
        wl = GemmWorkload(c, m)
        info = LayerInfo(node.name, node.op, f"dense-fc {plan.variant()}",
                         self.shape(node.inputs[0]), self.shape(node.outputs[0]),
                         select.density(weight), count_nonzeros(weight),
                         symbol=gemm_symbol(node.name, plan), opt=plan.codegen_opt,
                         dense_flops=2 * m * c * n, fused=list(node.fused))
        epilogue, tname = _epilogue(node), self.target.name
        info.source = KernelSource(lambda: render_gemm(node.name, wl, plan, bias, epilogue, tname),
                                   "gemm", node.name, wl, plan, gemm_key(plan), bias, epilogue, tname)
        step = st.FlatKernel(node.name, node.inputs[0], node.outputs[0], None,
                           pack_weights(weight, plan), plan.tiles(m), n, 2 * m * c * n)
        self._add_kernel(step, info, st.GemmFn)

    def softmax(self, node: Node) -> None:
        rows, k = self.shape(node.inputs[0])
        log, v, tname = node.op == "LogSoftmax", self.target.vector_width, self.target.name
        info = LayerInfo(node.name, node.op, f"softmax v{v}", (rows, k), (rows, k),
                         symbol=softmax_symbol(node.name, log, v))
        info.source = KernelSource(lambda: render_softmax(node.name, k, log, v, tname),
                                   "softmax", node.name, k, log, v, tname)
        step = st.FlatKernel(node.name, node.inputs[0], node.outputs[0], None, None, rows, 1,
                             rows * k * 30)
        self._add_kernel(step, info, st.ConvFn)

    def alias(self, node: Node, base: str) -> None:
        """Flatten/Reshape of a contiguous arena tensor: a view, no step does any work."""
        self.aliases[node.outputs[0]] = (base, self.shape(node.outputs[0]))
        self.steps.append(st.Alias(node.name, node.outputs[0]))
        self.layers.append(LayerInfo(node.name, node.op, "view (no copy)", self.shape(node.inputs[0]),
                                     self.shape(node.outputs[0]), fused=list(node.fused)))

    def reference(self, node: Node, layouts: dict[str, Layout]) -> None:
        consts = {t: self.graph.const(t) for t in node.inputs if t and self.graph.const(t) is not None}
        planned = frozenset(o for o in node.outputs if o in layouts or o in self.flat)
        self.steps.append(st.Reference(node.name, node, consts, run_node, planned))
        out = node.outputs[0] if node.outputs else ""
        self.layers.append(LayerInfo(node.name, node.op, "reference (numpy)",
                                     self.shape(node.inputs[0]) if node.inputs else (),
                                     self.shape(out), fused=list(node.fused)))

    def _add_kernel(self, step: st.Step, info: LayerInfo, fn_type: type) -> None:
        self.steps.append(step)
        self.layers.append(info)
        self.kernels.append(info)
        self.bind.append((step, info.symbol, fn_type))


def lower(graph: Graph, target: Target, batch: int, overrides: dict[str, dict] | None = None,
          load: bool = True, threads: int | None = None) -> Program:
    """Build the program for `graph` (shapes bound to `batch`). With load=False the kernels are
    compiled (for ir/asm inspection of foreign targets) but not loaded into memory."""
    order = graph.topo_order()
    layouts = plan_layouts(graph, order, target)
    b = _Builder(graph, target, batch, overrides or {}, threads)
    b.parts = concat_parts_in_place(graph, order, layouts)
    for x, (y, _) in b.parts.items():
        layouts[x] = layouts[y].in_channel_slice(layouts[x].channels)
    b.flat = flat_tensors(graph, order, layouts)
    for t in graph.inputs:
        b.steps.append(st.WriteInput(f"input:{t}", t, t in layouts or t in b.flat))
    for node in order:
        base = view_base(graph, node, layouts, b.flat, b.aliases)
        if base is not None:
            del b.flat[node.outputs[0]]
            b.alias(node, base)
            continue
        if conv_lowerable(graph, node):
            b.conv(node, layouts)
            continue
        if pool_lowerable(node) and node.inputs[0] in layouts and node.outputs[0] in layouts:
            b.pool(node, layouts)
            continue
        if concat_lowerable(graph, node, layouts):
            b.concat(node, layouts)
            continue
        if (node.op == "LRN" and node.inputs[0] in layouts and node.outputs[0] in layouts
                and LRNWorkload.from_attrs(graph.value(node.inputs[0]).static_shape(),
                                           node.attrs).power_form is not None):
            b.lrn(node, layouts)
            continue
        if softmax_lowerable(graph, node, b.flat, b.aliases):
            b.softmax(node)
            continue
        fc = fc_weights(graph, node) if node.op in ("Gemm", "MatMul") else None
        if fc is not None:
            kind = select.choose_fc(fc[0], b.images(node.inputs[0]))
            {"dense": b.dense_fc, "rows": b.sparse_fc, "batch_lanes": b.batch_lanes_fc}[kind](node, *fc)
        else:
            b.reference(node, layouts)

    kernel_layers = {info.name for info in b.layers if info.source is not None}
    unknown = sorted(set(overrides or {}) - kernel_layers)
    if unknown:
        raise InvalidPlanError(f"plans given for {unknown}, which are not kernel layers of this "
                               f"model; kernel layers: {sorted(kernel_layers)}")
    library = _compile(b, target, load)
    driver = DriverFn(library.address(DRIVER_SYMBOL)) if library is not None else None
    # liveness: step index of each tensor's producer and last reader
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, step in enumerate(b.steps):
        for t in _writes(step):
            first.setdefault(t, i)
        for t in _reads(step):
            last[t] = i
    end = len(b.steps)
    for view, (base, _) in b.aliases.items():  # a view's readers keep its base's buffer alive
        if view in last:
            last[base] = max(last.get(base, 0), last[view])
        if view in graph.outputs:
            last[base] = len(b.steps)
    # a Concat's output buffer holds its in-place inputs: written from the first of them on,
    # alive while any of them is read, as large as the farthest any of their kernels reach
    reach: dict[str, int] = {}
    for part, (whole, offset) in b.parts.items():
        if part in first:
            first[whole] = min(first.get(whole, first[part]), first[part])
        if part in last:
            last[whole] = max(last.get(whole, 0), last[part])
        lay = layouts[part]
        part_floats = (b.images(part) - 1) * lay.image_stride + lay.shift_stride
        reach[whole] = max(reach.get(whole, 0), offset + max(part_floats, b.extent.get(part, 0)))
    lifetimes = []
    in_place_of = residuals_to_write_over(b.steps, b.aliases, b.parts)
    for t, layout in layouts.items():
        if t not in first or t in b.parts:
            continue
        floats = max(b.images(t) * layout.image_stride, b.extent.get(t, 0), reach.get(t, 0))
        lifetimes.append(Lifetime(t, layout, floats, first[t],
                                  end if t in graph.outputs else last.get(t, first[t]),
                                  in_place_of.get(t)))
    slot_of, sizes = plan_buffers(lifetimes)
    offsets = {}
    for part, (whole, offset) in b.parts.items():
        if whole in slot_of:
            slot_of[part], offsets[part] = slot_of[whole], offset
    return Program(batch, b.steps, slot_of, sizes, {t: layouts[t] for t in slot_of},
                   {t: b.images(t) for t in slot_of}, b.scratch, b.flat, b.aliases,
                   b.layers, library, list(graph.inputs), list(graph.outputs), driver, offsets)


def residuals_to_write_over(steps: list[st.Step], aliases: dict, parts: dict) -> dict[str, str]:
    """Output -> the fused residual whose buffer it may take (`Lifetime.in_place_of`): of
    kernels that read each residual element just before writing the same output element, those
    whose residual owns its buffer (not a view, nor a Concat input written into another's) and
    is not where the kernel reads its input from (a conv reads its input around each output)."""
    views = set(aliases) | {base for base, _ in aliases.values()}

    def storage(t: str) -> str:
        return aliases[t][0] if t in aliases else parts[t][0] if t in parts else t

    return {step.output: step.residual for step in steps
            if isinstance(step, st.ActivationKernel) and step.residual_in_place
            and step.residual not in views and step.residual not in parts
            and storage(step.input) != step.residual}


def _writes(step: st.Step) -> list[str]:
    return step.writes()


def _reads(step: st.Step) -> list[str]:
    if isinstance(step, st.WriteInput):
        return []
    if isinstance(step, st.Reference):
        return [t for t in step.node.inputs if t]
    if isinstance(step, st.Alias):
        return []  # the view's own readers count for its base
    if isinstance(step, st.ActivationKernel) and step.residual:
        return [step.input, step.residual]
    return [step.input]


def softmax_lowerable(graph: Graph, node: Node, flat: dict, aliases: dict) -> bool:
    """Softmax / LogSoftmax over the rows of a 2-D arena tensor."""
    if node.op not in ("Softmax", "LogSoftmax") or len(node.outputs) != 1:
        return False
    x, y = node.inputs[0], node.outputs[0]
    if (x not in flat and x not in aliases) or y not in flat or len(flat[y]) != 2:
        return False
    return node.attrs.get("axis") in (1, -1)


def concat_lowerable(graph: Graph, node: Node, layouts: dict[str, Layout]) -> bool:
    """A Concat of planned 4-D activations along channels, each input a distinct tensor."""
    if node.op != "Concat" or len(node.outputs) != 1 or node.outputs[0] not in layouts:
        return False
    if node.attrs.get("axis") not in (1, -3) or len(set(node.inputs)) != len(node.inputs):
        return False
    return all(t in layouts and layouts[t].phases == 1 and layouts[t].shifts == 1
               for t in node.inputs)


def concat_parts_in_place(graph: Graph, order: list[Node], layouts: dict[str, Layout]
                          ) -> dict[str, tuple[str, int]]:
    """Concat inputs whose producers can write them straight into the Concat's output, so no
    copy joins them: input -> (Concat output, float offset of its first channel in an image).

    The input then takes the output's layout for its channels (`Layout.in_channel_slice`), so
    the two layouts must agree but for the channels (`plan_layouts` makes them so where it
    can), and its first channel must start on a vector boundary (kernels assume aligned
    buffers). Not for graph inputs and outputs, inputs another Concat or a Flatten/Reshape also
    reads, inputs that are Concat outputs themselves, or the inputs of a Concat whose output is
    such a part (one level of views). A producer writes nothing outside its channels but zeros
    into their padding (which is padding of the output too: every kernel keeps pads zero)."""
    concats = [n for n in order if concat_lowerable(graph, n, layouts)]
    concat_outputs = {n.outputs[0] for n in concats}
    read_by_concat: dict[str, int] = {}
    viewed = set()
    for n in order:
        if n.op == "Concat":
            for t in n.inputs:
                read_by_concat[t] = read_by_concat.get(t, 0) + 1
        elif n.op in ("Flatten", "Reshape"):
            viewed.update(n.inputs)
    produced = {o for n in order for o in n.outputs}
    boundary = set(graph.inputs) | set(graph.outputs)
    candidates: dict[str, tuple[str, int]] = {}
    for node in concats:
        whole = layouts[node.outputs[0]]
        channel = 0
        for x in node.inputs:
            lay = layouts[x]
            offset = channel * whole.channel_stride
            channel += lay.channels
            if (x in boundary or x not in produced or x in concat_outputs
                    or read_by_concat.get(x) != 1
                    or x in viewed
                    or replace(lay, channels=whole.channels) != whole
                    or offset % ALIGN_FLOATS):
                continue
            candidates[x] = (node.outputs[0], offset)
    return {x: (y, off) for x, (y, off) in candidates.items() if y not in candidates}


def flat_tensors(graph: Graph, order: list[Node], layouts: dict[str, Layout]) -> dict[str, tuple]:
    """Float32 runtime tensors of static shape that are not planned 4-D activations: they live
    in the arena too (FC inputs and outputs, what numpy steps hand to kernels)."""
    flat = {}
    for t in list(graph.inputs) + [o for n in order for o in n.outputs if o]:
        v = graph.values.get(t)
        if (t in layouts or v is None or v.const is not None or v.dtype != np.float32
                or v.shape is None or not all(isinstance(d, int) for d in v.shape)):
            continue
        flat[t] = tuple(int(d) for d in v.shape)
    return flat


def view_base(graph: Graph, node: Node, layouts: dict[str, Layout], flat: dict[str, tuple],
              aliases: dict[str, tuple]) -> str | None:
    """The arena tensor a Flatten/Reshape output can be a view of (None: it must copy): the
    input must be contiguous, a flat tensor or an unpadded 4-D one with images back to back."""
    if node.op not in ("Flatten", "Reshape") or not node.outputs or node.outputs[0] not in flat:
        return None
    x = node.inputs[0]
    base = aliases[x][0] if x in aliases else x
    if base in flat:
        return base
    layout = layouts.get(base)
    if layout is None or not layout.is_plain:
        return None
    images = graph.value(base).static_shape()[0]
    per_image = layout.channels * layout.height * layout.width
    return base if images == 1 or layout.image_stride == per_image else None


def _compile(b: _Builder, target: Target, load: bool) -> llvm.CodeLibrary | None:
    objects = []
    for info in b.kernels:
        start = time.perf_counter()
        obj, cached = llvm.compile_source(info.source, target, info.opt)
        info.compile_seconds = time.perf_counter() - start
        info.cached, info.code_bytes = cached, len(obj)
        objects.append(obj)
    if not load:
        return None
    objects.append(llvm.compile_source(schedule_source(target.name), target, 2)[0])
    library = llvm.CodeLibrary(target)
    for obj in objects:
        library.add_object(obj)
    library.finalize()
    for step, symbol, fn_type in b.bind:
        step.address = library.address(symbol)
        step.fn = fn_type(step.address)
    for info in b.kernels:  # a loaded program keeps code, not what it was generated from
        info.release()
    return library
