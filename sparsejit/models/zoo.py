"""The architectures of the built-in models, written as layer lists on a NetBuilder.

Layer names follow the originals (BVLC Caffe prototxts, torchvision's ResNet) so users can
refer to them, e.g. cm.ir("conv3") or cm.ir("layer3.2.conv2").
"""

from __future__ import annotations

from collections.abc import Callable

from .builder import NetBuilder

Architecture = Callable[[NetBuilder], None]


def caffenet(b: NetBuilder) -> None:
    """BVLC reference CaffeNet: AlexNet with each pool placed before its LRN."""
    b.conv("conv1", 96, 11, stride=4)
    b.relu("relu1")
    b.maxpool("pool1", 3, 2, ceil=True)
    b.lrn("norm1")
    b.conv("conv2", 256, 5, pad=2, group=2)
    b.relu("relu2")
    b.maxpool("pool2", 3, 2, ceil=True)
    b.lrn("norm2")
    b.conv("conv3", 384, 3, pad=1)
    b.relu("relu3")
    b.conv("conv4", 384, 3, pad=1, group=2)
    b.relu("relu4")
    b.conv("conv5", 256, 3, pad=1, group=2)
    b.relu("relu5")
    b.maxpool("pool5", 3, 2, ceil=True)
    _classifier(b)


def vgg16(b: NetBuilder) -> None:
    """VGG_ILSVRC_16_layers (configuration D) as released in Caffe."""
    for stage, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), 1):
        for i in range(1, depth + 1):
            b.conv(f"conv{stage}_{i}", width, 3, pad=1)
            b.relu(f"relu{stage}_{i}")
        b.maxpool(f"pool{stage}", 2, 2, ceil=True)
    _classifier(b)


def _classifier(b: NetBuilder) -> None:
    """The fc6-fc7-fc8 head shared by CaffeNet and VGG."""
    b.flatten("flatten")
    for i in (6, 7):
        b.gemm(f"fc{i}", 4096)
        b.relu(f"relu{i}")
        b.dropout(f"drop{i}")
    b.gemm("fc8", 1000)
    b.softmax("prob")


def resnet50(b: NetBuilder) -> None:
    """torchvision ResNet-50 v1.5: the stride of a downsampling block sits on its 3x3 conv."""
    b.conv("conv1", 64, 7, stride=2, pad=3, bias=False)
    b.bn("bn1")
    b.relu("relu")
    b.maxpool("maxpool", 3, 2, pad=1)
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            _bottleneck(b, f"layer{stage}.{i}", width, stride, project=i == 0)
    b.global_avgpool("avgpool")
    b.flatten("flatten")
    b.gemm("fc", 1000)


def _bottleneck(b: NetBuilder, prefix: str, width: int, stride: int, project: bool) -> None:
    x = b.last
    b.conv(f"{prefix}.conv1", width, 1, bias=False)
    b.bn(f"{prefix}.bn1")
    b.relu(f"{prefix}.relu1")
    b.conv(f"{prefix}.conv2", width, 3, stride=stride, pad=1, bias=False)
    b.bn(f"{prefix}.bn2")
    b.relu(f"{prefix}.relu2")
    b.conv(f"{prefix}.conv3", 4 * width, 1, bias=False)
    # Trained ResNets end each residual branch with small BN scales; with gamma ~ 1 the
    # sixteen residual additions would compound the activation variance.
    residual = b.bn(f"{prefix}.bn3", gamma_mean=0.2)
    shortcut = x
    if project:
        b.conv(f"{prefix}.downsample.0", 4 * width, 1, stride=stride, bias=False, x=x)
        shortcut = b.bn(f"{prefix}.downsample.1")
    b.add(f"{prefix}.add", residual, shortcut)
    b.relu(f"{prefix}.relu3")


# GoogLeNet inception widths: 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj.
INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def googlenet(b: NetBuilder) -> None:
    """BVLC GoogLeNet (Inception v1 with LRN); Caffe pools round up, hence ceil=True."""
    b.conv("conv1/7x7_s2", 64, 7, stride=2, pad=3)
    b.relu("conv1/relu_7x7")
    b.maxpool("pool1/3x3_s2", 3, 2, ceil=True)
    b.lrn("pool1/norm1")
    b.conv("conv2/3x3_reduce", 64, 1)
    b.relu("conv2/relu_3x3_reduce")
    b.conv("conv2/3x3", 192, 3, pad=1)
    b.relu("conv2/relu_3x3")
    b.lrn("conv2/norm2")
    b.maxpool("pool2/3x3_s2", 3, 2, ceil=True)
    for block in ("3a", "3b"):
        _inception(b, block)
    b.maxpool("pool3/3x3_s2", 3, 2, ceil=True)
    for block in ("4a", "4b", "4c", "4d", "4e"):
        _inception(b, block)
    b.maxpool("pool4/3x3_s2", 3, 2, ceil=True)
    for block in ("5a", "5b"):
        _inception(b, block)
    # 7x7 at 224x224; the whole map at other sizes.
    b.avgpool("pool5/7x7_s1", b.shapes[b.last][1], 1)
    b.dropout("pool5/drop_7x7_s1")
    b.flatten("loss3/flatten")
    b.gemm("loss3/classifier", 1000)
    b.softmax("prob")


def _inception(b: NetBuilder, block: str) -> None:
    p = f"inception_{block}"
    n1x1, n3r, n3, n5r, n5, nproj = INCEPTIONS[block]
    x = b.last
    branches = [
        _conv_relu(b, f"{p}/1x1", f"{p}/relu_1x1", n1x1, 1, 0, x),
        _conv_relu(b, f"{p}/3x3", f"{p}/relu_3x3", n3, 3, 1,
                   _conv_relu(b, f"{p}/3x3_reduce", f"{p}/relu_3x3_reduce", n3r, 1, 0, x)),
        _conv_relu(b, f"{p}/5x5", f"{p}/relu_5x5", n5, 5, 2,
                   _conv_relu(b, f"{p}/5x5_reduce", f"{p}/relu_5x5_reduce", n5r, 1, 0, x)),
        _conv_relu(b, f"{p}/pool_proj", f"{p}/relu_pool_proj", nproj, 1, 0,
                   b.maxpool(f"{p}/pool", 3, 1, pad=1, ceil=True, x=x)),
    ]
    b.concat(f"{p}/output", branches)


def _conv_relu(b: NetBuilder, conv: str, relu: str, channels: int, kernel: int, pad: int,
               x: str) -> str:
    b.conv(conv, channels, kernel, pad=pad, x=x)
    return b.relu(relu)


def tiny(b: NetBuilder) -> None:
    """A 32x32 CNN touching every op class the compiler handles, for quick tests and demos."""
    b.conv("conv1", 16, 3, pad=1)  # dense first conv, with bias, then BN
    b.bn("bn1")
    b.relu("relu1")
    b.conv("conv2", 32, 3, stride=2, pad=1)  # strided
    b.relu("relu2")
    skip = b.lrn("norm2")
    b.conv("conv3", 32, 3, pad=1, group=4, bias=False)  # grouped, BN instead of bias
    b.bn("bn3")
    b.relu("relu3")
    b.conv("conv4", 32, 3, pad=1, group=32)  # depthwise
    b.add("add4", b.last, skip)  # residual
    b.relu("relu4")
    x = b.maxpool("pool4", 2, 2)
    branches = [
        _conv_relu(b, "conv5a", "relu5a", 16, 1, 0, x),
        b.relu("relu5b", x=b.conv("conv5b", 16, 3, pad=2, dilation=2, x=x)),  # dilated
        _conv_relu(b, "conv5c", "relu5c", 16, 1, 0, b.avgpool("pool5c", 3, 1, pad=1, x=x)),
    ]
    b.concat("concat5", branches)
    b.avgpool("pool5", 2, 2)
    b.flatten("flatten")
    b.gemm("fc6", 64)
    b.relu("relu6")
    b.gemm("fc7", 10)
    b.softmax("prob")


# name -> (architecture, canonical input size)
ARCHITECTURES: dict[str, tuple[Architecture, int]] = {
    "caffenet": (caffenet, 227),
    "vgg16": (vgg16, 224),
    "resnet50": (resnet50, 224),
    "googlenet": (googlenet, 224),
    "tiny": (tiny, 32),
}
