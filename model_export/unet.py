"""The classic U-Net, composed from small blocks.

``ConvBlock`` (1×1 channel change, then two 3×3 feature convolutions), ``Down``
(max-pool then ``ConvBlock``), ``Up`` (upsample, fuse with the skip, ``ConvBlock``)
and ``UNet`` (encoder, decoder, 1×1 head). All convolutions use same padding, so an
input whose height and width are multiples of ``2**depth`` gives logits of the same
size. Also: the theoretical receptive field and the FLOPs per input pixel, computed
from the architecture so the service can size its tile overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

Fusion = Literal["concat", "add"]
Upsample = Literal["transpose", "bilinear"]


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines the architecture; stored in checkpoints and ONNX metadata."""

    in_channels: int = 1
    classes: int = 1
    depth: int = 4  # poolings; depth + 1 scales counting the input
    base_channels: int = 16  # width of the first level, doubled per level
    fusion: Fusion = "concat"
    upsample: Upsample = "transpose"
    # One more output channel after the classes: each pixel's distance to the boundary of
    # its nucleus, divided by that nucleus' largest (1 at the centre, 0 at the rim and on
    # background). Its cores seed the watershed that splits touching nuclei.
    center: bool = False

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.base_channels < 1 or self.in_channels < 1 or self.classes < 1:
            raise ValueError(f"channel counts must be positive: {self}")
        if self.fusion not in ("concat", "add"):
            raise ValueError(f"fusion must be 'concat' or 'add', got {self.fusion!r}")
        if self.upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {self.upsample!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def outputs(self) -> int:
        """Output channels: the classes, then the centre channel when there is one."""
        return self.classes + int(self.center)

    @property
    def size_divisor(self) -> int:
        """Height and width of an input must be multiples of this."""
        return 2**self.depth


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class ConvBlock(nn.Sequential):
    """``(N, cin, H, W)`` → ``(N, cout, H, W)``: a 1×1 conv changes the channel count
    (only when ``cin != cout``), then two 3×3 conv–BN–ReLU extract features."""

    def __init__(self, cin: int, cout: int) -> None:
        layers: list[nn.Module] = []
        if cin != cout:
            layers += _conv_bn_relu(cin, cout, 1)
        layers += _conv_bn_relu(cout, cout, 3) + _conv_bn_relu(cout, cout, 3)
        super().__init__(*layers)


class Down(nn.Sequential):
    """``(N, cin, H, W)`` → ``(N, cout, H/2, W/2)``: 2×2 max-pool, then a ``ConvBlock``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(cin, cout))


class Up(nn.Module):
    """Upsample the coarse map ×2, fuse it with the skip of the same scale, ``ConvBlock``.

    ``coarse``: ``(N, cin, H/2, W/2)``; ``skip``: ``(N, cskip, H, W)`` → ``(N, cout, H, W)``.
    The upsampling halves the channel count to ``cskip`` so both fusions see equal widths:
    ``concat`` stacks them (2·cskip channels, the classic U-Net), ``add`` sums them
    (cskip channels, the FCN-style alternative).
    """

    def __init__(self, cin: int, cskip: int, cout: int, fusion: Fusion, upsample: Upsample) -> None:
        super().__init__()
        self.fusion = fusion
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cskip, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cskip, 1),
            )
        self.block = ConvBlock(2 * cskip if fusion == "concat" else cskip, cout)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(coarse)
        fused = torch.cat([skip, up], dim=1) if self.fusion == "concat" else skip + up
        return self.block(fused)


class UNet(nn.Module):
    """``(N, in_channels, H, W)`` float32 → ``(N, config.outputs, H, W)`` logits.

    H and W must be multiples of ``2**depth`` (the service pads to that).
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs: object) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig(**kwargs)  # type: ignore[arg-type]
        c = self.config
        widths = [c.base_channels * 2**level for level in range(c.depth + 1)]
        self.stem = ConvBlock(c.in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(c.depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], c.fusion, c.upsample) for i in reversed(range(c.depth))
        )
        self.head = nn.Conv2d(widths[0], c.outputs, kernel_size=1)
        self.frozen_batchnorm = False

    def freeze_batchnorm(self) -> UNet:
        """Keep every BatchNorm on its running statistics, also in training mode (they stop updating).

        For weights that come without batch statistics (an exported ONNX file folds them into the
        convolutions: ``model_export.onnx_init``): normalising by batch statistics would change what
        the network computes at the first step.
        """
        self.frozen_batchnorm = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> UNet:
        super().train(mode)
        if self.frozen_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def receptive_field(config: UNetConfig) -> int:
    """Theoretical receptive field of one output pixel, in input pixels.

    The longest path runs down the whole encoder and back up the decoder (skips are
    shorter). Walking it: a k×k conv at a scale where one step spans ``jump`` input
    pixels widens the field by (k-1)·jump; a 2×2 pool by 1·jump before doubling jump;
    a 2×2/stride-2 transposed conv maps each output pixel to one input pixel (adds 0);
    bilinear ×2 (align_corners=False) reads two coarse neighbours, which may both lie on
    one side of the pooling cell the pixel came from, so it is bounded by 2·coarse jump.
    """
    rf, jump = 1, 1
    per_block = 2 * 2  # two 3×3 convs (the 1×1 adds nothing)
    for _ in range(config.depth):
        rf += per_block * jump  # encoder block at this scale
        rf += 1 * jump  # 2×2 max-pool
        jump *= 2
    rf += per_block * jump  # bottleneck block
    for _ in range(config.depth):
        if config.upsample == "bilinear":
            rf += 2 * jump
        jump //= 2
        rf += per_block * jump  # decoder block
    return rf


def flops_per_pixel(model: UNet, probe: int | None = None) -> float:
    """Multiply–adds × 2 of convolutions per input pixel (BN/ReLU/pool not counted).

    Measured with forward hooks on a ``probe``² input, so it follows the actual layers.
    """
    probe = probe or 4 * model.config.size_divisor
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * output.numel()
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            total += 2 * k * inputs[0].numel()

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, probe, probe))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total / (probe * probe)
