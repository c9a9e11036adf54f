"""ResNet-50 on ImageNet for Fuengfusin 2024 and Pranto et al. 2025: torchvision's pretrained weights
(``IMAGENET1K_V1``, 76.13% top-1 in torchvision's documentation), loaded through torchvision where it
can be imported, or from a local ``.safetensors`` file into bitlab's own ResNet-50, which has
torchvision's architecture and parameter names (He et al. 2016, Table 1; the stride on the 3x3
convolution, as torchvision's "v1.5").

Weights files are read with bitlab's own safetensors reader (a JSON header and raw little-endian
tensors): never through pickle. On a machine with torchvision, export once with
``save_safetensors(torchvision_model.state_dict(), "resnet50.safetensors")``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["TOP1", "Bottleneck", "ResNet50", "load_safetensors", "pretrained_resnet50", "resnet50", "save_safetensors"]

#: top-1 accuracy of torchvision's ResNet50_Weights.IMAGENET1K_V1 on the ImageNet validation set
TOP1 = 0.7613
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class Bottleneck(nn.Module):
    """1x1 - 3x3 (stride here) - 1x1 convolutions with BatchNorm, expansion 4, projection shortcut."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's parameter names: stem (7x7 conv, BN, ReLU, 3x3 max-pool), stages of
    3, 4, 6 and 3 bottlenecks (widths 64-512), global average pooling, ``fc``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 3, 1)
        self.layer2 = _stage(256, 128, 4, 2)
        self.layer3 = _stage(512, 256, 6, 2)
        self.layer4 = _stage(1024, 512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(cin: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` bottlenecks of ``width``; the first takes ``cin`` channels and the stride."""
    first = Bottleneck(cin, width, stride)
    return nn.Sequential(first, *(Bottleneck(4 * width, width) for _ in range(blocks - 1)))


def resnet50(num_classes: int = 1000) -> ResNet50:
    """A freshly initialized :class:`ResNet50` (25.6M parameters at 1000 classes)."""
    return ResNet50(num_classes)


def save_safetensors(tensors: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write ``tensors`` (a state dict) as a safetensors file: an 8-byte little-endian header length, a
    JSON header ``{name: {"dtype", "shape", "data_offsets"}}``, then each tensor's little-endian bytes."""
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise ValueError(
                f"tensors[{name!r}]: dtype {t.dtype} has no safetensors name; allowed {[str(d) for d in _NAMES]}"
            )
        flat = t.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes
    path = Path(path)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    return path


def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (see :func:`save_safetensors`), on the CPU."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON)") from e
    body = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']!r}; allowed {sorted(_DTYPES)}")
        lo, hi = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        buf = np.frombuffer(body[lo:hi], dtype=np.uint8).copy()
        if buf.size == 0:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        out[name] = torch.from_numpy(buf).view(dtype).reshape(info["shape"])
    return out


def pretrained_resnet50(weights: str | Path = "torchvision") -> nn.Module:
    """ResNet-50 with ImageNet weights, in eval mode: ``"torchvision"`` loads torchvision's
    ``IMAGENET1K_V1`` through torchvision (downloaded on first use by torchvision); a path loads a
    ``.safetensors`` state dict into :class:`ResNet50` (strict: every name and shape must match)."""
    if isinstance(weights, str) and weights == "torchvision":
        try:
            from torchvision.models import ResNet50_Weights
            from torchvision.models import resnet50 as tv_resnet50
        except ImportError as e:
            raise ImportError(
                'weights="torchvision" needs torchvision (pip install "bitlab[vision]"); or pass the path of '
                "a .safetensors file exported on a machine that has it"
            ) from e
        return tv_resnet50(weights=ResNet50_Weights.IMAGENET1K_V1).eval()
    path = Path(weights)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"weights: {str(weights)!r}; allowed 'torchvision' or a .safetensors file (bitlab never unpickles "
            "a .pth file: export it with bitlab.zoo.pretrained.save_safetensors(model.state_dict(), path))"
        )
    state = load_safetensors(path)
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000
    model = ResNet50(num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()
