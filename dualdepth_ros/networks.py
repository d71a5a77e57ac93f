"""Depth and pose networks: ResNet encoder, two-branch depth decoder, fusion, PoseNet, exported module.

Model units
-----------
Every depth this module outputs is in *model units*: ``depth = 1 / (10·sigmoid(x) + 0.01)``
(method.md §5), i.e. between 0.0999 and 100. Self-supervised training fixes depth only up to one
global scale shared with the PoseNet's translations; depth becomes metres only after scale
recovery (``scale_mode`` of the node, or median scaling in evaluation).

Layout of what :class:`DepthNet` returns for one image batch (monodepth2-style keys)::

    ("features",)            list of 5 encoder maps, strides 2, 4, 8, 16, 32 (``EncoderOutput``)
    ("depth", b, s)          B×1×H_s×W_s  depth of branch ``b`` at scale ``s`` (model units)
    ("conf", b, s)           B×1×H_s×W_s  confidence of branch ``b`` in [0, 1]
    ("conf_logit", b, s)     B×1×H_s×W_s  the confidence before the sigmoid (for the losses)
    ("depth_fused", s)       B×1×H_s×W_s  per pixel the depth of the most confident branch
    ("conf_fused", s)        B×1×H_s×W_s  that branch's confidence

Scale ``s`` has the resolution of the input divided by ``2**s`` (rounded up where the size is
not a multiple of 32: the decoder upsamples to the skip connection's exact size).

:class:`DepthModel` runs the depth net on every frame of a clip that needs a depth and the PoseNet
on every pair, and returns the same keys with a frame offset inserted; see its docstring and the
module docstring of :mod:`dualdepth_ros.losses` for the clip layout.

:class:`ExportModule` is the depth net as it is served (fused outputs at full resolution); the
ONNX export of it (graph names, metadata, the exporter) lives in :mod:`dualdepth_ros.inference`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .geometry import invert_pose, pose_vec_to_mat

__all__ = [
    "ENCODER_BLOCKS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "ResNetEncoder",
    "DepthBranch",
    "DepthNet",
    "PoseNet",
    "DepthModel",
    "ExportModule",
    "fuse_branches",
    "disp_to_depth",
    "build_depth_net",
    "build_pose_net",
    "count_parameters",
    "count_flops",
]

#: Registry: encoder name → residual blocks per stage (BasicBlock, ResNet-18 family).
ENCODER_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet10": (1, 1, 1, 1),  # lighter: half the blocks (use with encoder_width 32 on Jetson)
    "resnet34": (3, 4, 6, 3),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convs); the last BN starts with γ = 0 so the block starts as identity."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18-style encoder written here (no pretrained weights offline).

    Parameters
    ----------
    arch : a key of :data:`ENCODER_BLOCKS`.
    width : channels of the first stage (64 for ResNet-18; 32 for the light Jetson variant).
    in_frames : images concatenated on channels (1 for depth, 2–5 for the PoseNet).
    normalise : map RGB in [0, 1] to ImageNet statistics inside the network.

    Input ``B×(3·in_frames)×H×W`` RGB in [0, 1]; output a list of 5 feature maps at strides
    2, 4, 8, 16, 32 with :attr:`num_ch_enc` channels (monodepth2's layout).
    """

    def __init__(self, arch: str = "resnet18", width: int = 64, in_frames: int = 1, normalise: bool = True) -> None:
        super().__init__()
        if arch not in ENCODER_BLOCKS:
            raise ValueError(f"unknown encoder {arch!r}; choose one of {sorted(ENCODER_BLOCKS)}")
        blocks = ENCODER_BLOCKS[arch]
        self.normalise = normalise
        self.in_frames = in_frames
        mean = torch.tensor(IMAGENET_MEAN).repeat(in_frames).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD).repeat(in_frames).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.conv1 = nn.Conv2d(3 * in_frames, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [width, width * 2, width * 4, width * 8]
        layers = []
        cin = width
        for i, (n, c) in enumerate(zip(blocks, chans)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, c, stride)] + [BasicBlock(c, c) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.num_ch_enc = [width] + chans
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)  # zero-init the residual branch (Goyal et al. 2017)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalise:
            x = (x - self.mean) / self.std
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


# ---------------------------------------------------------------------------------------
# Depth decoder
# ---------------------------------------------------------------------------------------
def _conv3x3(cin: int, cout: int, padding: str) -> nn.Module:
    if padding == "reflect":
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3))
    if padding == "zeros":
        return nn.Conv2d(cin, cout, 3, padding=1)
    raise ValueError(f"decoder padding must be 'zeros' or 'reflect', got {padding!r}")


class _ConvELU(nn.Module):
    def __init__(self, cin: int, cout: int, padding: str) -> None:
        super().__init__()
        self.conv = _conv3x3(cin, cout, padding)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def disp_to_depth(logit: torch.Tensor, disp_scale: float = 10.0, disp_offset: float = 0.01) -> torch.Tensor:
    """``depth = 1 / (disp_scale·sigmoid(x) + disp_offset)`` (method.md §5): 0.0999–100 model units."""
    return 1.0 / (disp_scale * torch.sigmoid(logit) + disp_offset)


class DepthBranch(nn.Module):
    """One prediction branch: a monodepth2 decoder (nearest upsample, 3×3 conv + ELU, skips).

    Each output scale has a 3×3 head with 1 channel (depth logit) or 2 (depth logit, confidence
    logit). ``forward(features, out_size)`` returns ``{scale: (depth_logit, conf_logit | None)}``.
    """

    def __init__(
        self,
        num_ch_enc: Sequence[int],
        num_ch_dec: Sequence[int] = (16, 32, 64, 128, 128),
        scales: Sequence[int] = (0, 1, 2, 3),
        predict_confidence: bool = True,
        padding: str = "zeros",
    ) -> None:
        super().__init__()
        if len(num_ch_dec) != 5 or len(num_ch_enc) != 5:
            raise ValueError("encoder and decoder need 5 channel counts each")
        self.scales = tuple(sorted(scales))
        self.predict_confidence = predict_confidence
        self.up0 = nn.ModuleList()
        self.up1 = nn.ModuleList()
        for i in range(4, -1, -1):
            cin = num_ch_enc[-1] if i == 4 else num_ch_dec[i + 1]
            self.up0.append(_ConvELU(cin, num_ch_dec[i], padding))
            cskip = num_ch_enc[i - 1] if i > 0 else 0
            self.up1.append(_ConvELU(num_ch_dec[i] + cskip, num_ch_dec[i], padding))
        out_ch = 2 if predict_confidence else 1
        self.heads = nn.ModuleDict({str(s): _conv3x3(num_ch_dec[s], out_ch, padding) for s in self.scales})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="leaky_relu", a=0.0)
                nn.init.zeros_(m.bias)
        for head in self.heads.values():
            conv = head[-1] if isinstance(head, nn.Sequential) else head
            nn.init.normal_(conv.weight, std=1e-3)  # start near sigmoid(0): mid-range depth, confidence ½

    def forward(
        self, features: Sequence[torch.Tensor], out_size: tuple[int, int]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        out: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        x = features[-1]
        for k, i in enumerate(range(4, -1, -1)):
            x = self.up0[k](x)
            size = tuple(features[i - 1].shape[-2:]) if i > 0 else tuple(out_size)
            x = F.interpolate(x, size=size, mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.up1[k](x)
            if i in self.scales:
                y = self.heads[str(i)](x)
                out[i] = (y[:, 0:1], y[:, 1:2] if self.predict_confidence else None)
        return out


def fuse_branches(depths: Sequence[torch.Tensor], confs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the depth of the most confident branch and that confidence (CN114037087A).

    Parameters
    ----------
    depths, confs : one ``B×1×H×W`` tensor per branch (confidences in [0, 1]).

    Returns
    -------
    depth, confidence : ``B×1×H×W``. Ties go to the lower branch index (``argmax`` returns the
    first maximum, as does ONNX ``ArgMax``). No Python control flow on values: ``argmax`` +
    ``gather`` export to ONNX, and in training the gradient reaches only the selected branch.
    """
    if len(depths) == 1:
        return depths[0], confs[0]
    d = torch.cat(list(depths), dim=1)
    c = torch.cat(list(confs), dim=1)
    idx = torch.argmax(c, dim=1, keepdim=True)
    return torch.gather(d, 1, idx), torch.gather(c, 1, idx)


class DepthNet(nn.Module):
    """Shared encoder + ``num_branches`` depth/confidence decoders + fusion.

    With ``num_branches == 1`` (the ``single_branch`` baseline) the fused depth is the branch's
    depth; without a confidence head the confidence is a constant 1 (ignored).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        encoder_width: int = 64,
        num_branches: int = 2,
        predict_confidence: bool = True,
        decoder_channels: Sequence[int] = (16, 32, 64, 128, 128),
        decoder_padding: str = "zeros",
        scales: Sequence[int] = (0, 1, 2, 3),
        disp_scale: float = 10.0,
        disp_offset: float = 0.01,
    ) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError("num_branches must be ≥ 1")
        if num_branches > 1 and not predict_confidence:
            raise ValueError("fusing several branches needs their confidences (predict_confidence: true)")
        self.encoder = ResNetEncoder(encoder, encoder_width)
        self.branches = nn.ModuleList(
            DepthBranch(self.encoder.num_ch_enc, decoder_channels, scales, predict_confidence, decoder_padding)
            for _ in range(num_branches)
        )
        self.num_branches = num_branches
        self.predict_confidence = predict_confidence
        self.scales = tuple(sorted(scales))
        self.disp_scale = float(disp_scale)
        self.disp_offset = float(disp_offset)

    def forward(self, image: torch.Tensor) -> dict[Any, Any]:
        """``image`` ``B×3×H×W`` RGB in [0, 1] → the dict of the module docstring."""
        feats = self.encoder(image)
        out: dict[Any, Any] = {("features",): feats}
        size = (image.shape[-2], image.shape[-1])
        for b, branch in enumerate(self.branches):
            for s, (dl, cl) in branch(feats, size).items():
                # The heads' logits leave reduced precision here (AMP): depth, confidence and the fusion's
                # argmax run in float32, so fp16/bf16 never flips which branch a pixel takes.
                dl = dl.float()
                cl = None if cl is None else cl.float()
                out[("depth", b, s)] = disp_to_depth(dl, self.disp_scale, self.disp_offset)
                if cl is None:
                    out[("conf", b, s)] = torch.ones_like(dl)
                else:
                    out[("conf_logit", b, s)] = cl
                    out[("conf", b, s)] = torch.sigmoid(cl)
        for s in self.scales:
            depths = [out[("depth", b, s)] for b in range(self.num_branches)]
            confs = [out[("conf", b, s)] for b in range(self.num_branches)]
            out[("depth_fused", s)], out[("conf_fused", s)] = fuse_branches(depths, confs)
        return out


# ---------------------------------------------------------------------------------------
# PoseNet
# ---------------------------------------------------------------------------------------
class PoseNet(nn.Module):
    """Odometry-free PoseNet: images concatenated on channels → ``6 × N_ref`` pose vectors.

    ``num_frames`` frames in temporal order; the anchor is frame 0 for a pair and the centre frame
    for a clip (3 or 5 frames). ``forward(frames)`` returns ``B×N_ref×6`` ``[axis-angle, t]`` of
    ``T_anchor_to_ref`` for each other frame in order (for a pair ``(I_a, I_b)``: ``T_a_to_b``).
    Outputs are multiplied by ``output_scale`` (0.01, method.md §1) so the initial motion is small.
    """

    def __init__(
        self, num_frames: int = 2, encoder: str = "resnet18", encoder_width: int = 64, output_scale: float = 0.01
    ) -> None:
        super().__init__()
        if not 2 <= num_frames <= 5:
            raise ValueError("the PoseNet takes 2 to 5 frames")
        self.num_frames = num_frames
        self.anchor = 0 if num_frames == 2 else num_frames // 2
        self.output_scale = float(output_scale)
        self.encoder = ResNetEncoder(encoder, encoder_width, in_frames=num_frames)
        c = self.encoder.num_ch_enc[-1]
        self.squeeze = nn.Conv2d(c, 256, 1)
        self.conv1 = nn.Conv2d(256, 256, 3, 1, 1)
        self.conv2 = nn.Conv2d(256, 256, 3, 1, 1)
        self.out = nn.Conv2d(256, 6 * (num_frames - 1), 1)
        for m in (self.squeeze, self.conv1, self.conv2):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(frames) != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames, got {len(frames)}")
        x = self.encoder(torch.cat(list(frames), dim=1))[-1]
        x = F.relu(self.squeeze(x))
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.out(x).mean(dim=(2, 3))
        return self.output_scale * x.view(-1, self.num_frames - 1, 6)


# ---------------------------------------------------------------------------------------
# Builders from config, the training wrapper
# ---------------------------------------------------------------------------------------
def build_depth_net(model_cfg: Any) -> DepthNet:
    """A :class:`DepthNet` from a ``ModelConfig`` (see :mod:`dualdepth_ros.config`)."""
    return DepthNet(
        encoder=model_cfg.encoder,
        encoder_width=model_cfg.encoder_width,
        num_branches=model_cfg.num_branches,
        predict_confidence=model_cfg.predict_confidence,
        decoder_channels=tuple(model_cfg.decoder_channels),
        decoder_padding=model_cfg.decoder_padding,
        scales=tuple(model_cfg.scales),
        disp_scale=model_cfg.disp_scale,
        disp_offset=model_cfg.disp_offset,
    )


def build_pose_net(pose_cfg: Any, clip_frames: int) -> PoseNet:
    """A :class:`PoseNet` from a ``PoseConfig``; ``clip_frames`` is used in ``clip`` mode."""
    n = 2 if pose_cfg.mode == "pairs" else clip_frames
    return PoseNet(n, pose_cfg.encoder, pose_cfg.encoder_width, pose_cfg.output_scale)


class DepthModel(nn.Module):
    """Depth net + PoseNet for training: ``outputs = model(batch)`` in the layout the losses expect.

    ``batch`` holds ``("color", f, 0)`` (and optionally ``("color_aug", f, 0)``, which the networks
    see instead) ``B×3×H×W`` RGB in [0, 1] for every offset ``f`` of ``layout.frames``.

    ``outputs`` holds, for every ``f`` in ``layout.depth_frames``, every branch ``b`` and scale ``s``::

        ("depth", f, b, s), ("conf", f, b, s), ("conf_logit", f, b, s)   [conf_logit only with a conf head]
        ("depth_fused", f, s), ("conf_fused", f, s)
        ("features", f)            list of 5 encoder feature maps

    and, for every adjacent pair ``(a, b)`` of ``layout.pose_pairs``, both directions::

        ("T", a, b), ("T", b, a)   B×4×4, T_a_to_b maps points of camera a into camera b
        ("pose_vec", a, b)         B×6 the PoseNet's raw output for the predicted direction
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        from .losses import clip_layout  # the losses define which frames and pairs they need

        self.cfg = cfg
        self.layout = clip_layout(cfg)
        self.depth = build_depth_net(cfg.model)
        self.pose = build_pose_net(cfg.pose, len(self.layout.frames))
        extr = cfg.pose.camera_in_body
        X = torch.eye(4) if extr is None else _pose_from_xyzq(extr)
        self.register_buffer("camera_in_body", X, persistent=False)

    def _image(self, batch: Mapping[Any, torch.Tensor], f: int) -> torch.Tensor:
        key = ("color_aug", f, 0)
        return batch[key] if key in batch else batch[("color", f, 0)]

    def forward(self, batch: Mapping[Any, torch.Tensor]) -> dict[Any, Any]:
        layout = self.layout
        outputs: dict[Any, Any] = {}
        frames = list(layout.depth_frames)
        bsz = self._image(batch, layout.target).shape[0]
        if self.cfg.model.depth_source == "ground_truth":
            outputs.update(self._gt_depth(batch, frames))
        elif self.cfg.model.reference_gradients or frames == [layout.target] or not torch.is_grad_enabled():
            # Depth: all frames through the net in one batch (BatchNorm sees them together, as in training).
            outputs.update(self._depth_of(batch, frames, bsz))
        else:
            # The sources' depth is used (warps, masks, consistency) but not trained through this clip: no
            # activations kept for them (every frame is trained as the target of its own clip).
            outputs.update(self._depth_of(batch, [layout.target], bsz))
            with torch.no_grad():
                outputs.update(self._depth_of(batch, [f for f in frames if f != layout.target], bsz))
        # Pose: the networks may run in reduced precision, the composition of motions does not.
        if self.cfg.pose.source == "topic":
            with torch.autocast(device_type=self._image(batch, layout.target).device.type, enabled=False):
                outputs.update(self._topic_poses(batch))
        else:
            outputs.update(self._network_poses(batch, bsz))
        return outputs

    def _depth_of(self, batch: Mapping[Any, torch.Tensor], frames: list[int], bsz: int) -> dict[Any, Any]:
        """The depth net on ``frames`` in one batch, outputs keyed by frame (module docstring)."""
        out: dict[Any, Any] = {}
        depth_out = self.depth(torch.cat([self._image(batch, f) for f in frames], dim=0))
        for key, value in depth_out.items():
            for i, f in enumerate(frames):
                if key == ("features",):
                    out[("features", f)] = [v[i * bsz : (i + 1) * bsz] for v in value]
                else:
                    out[(key[0], f, *key[1:])] = value[i * bsz : (i + 1) * bsz]
        return out

    def _network_poses(self, batch: Mapping[Any, torch.Tensor], bsz: int) -> dict[Any, torch.Tensor]:
        """``("T", a, b)`` and ``("pose_vec", a, b)`` from the PoseNet (pose composition in float32)."""
        layout = self.layout
        outputs: dict[Any, torch.Tensor] = {}
        device_type = self._image(batch, layout.target).device.type
        if self.cfg.pose.mode == "pairs":
            pairs = list(layout.pose_pairs)
            first = torch.cat([self._image(batch, a) for a, _ in pairs], dim=0)
            second = torch.cat([self._image(batch, b) for _, b in pairs], dim=0)
            vecs = self.pose([first, second])[:, 0].float()
            with torch.autocast(device_type=device_type, enabled=False):
                for i, (a, b) in enumerate(pairs):
                    vec = vecs[i * bsz : (i + 1) * bsz]
                    T = pose_vec_to_mat(vec)
                    outputs[("pose_vec", a, b)] = vec
                    outputs[("T", a, b)] = T
                    outputs[("T", b, a)] = invert_pose(T)
            return outputs
        clip = sorted(layout.frames)
        anchor = clip[self.pose.anchor]
        vecs = self.pose([self._image(batch, f) for f in clip]).float()
        refs = [f for f in clip if f != anchor]
        with torch.autocast(device_type=device_type, enabled=False):
            T_anchor = {anchor: torch.eye(4, device=vecs.device, dtype=vecs.dtype).expand(bsz, 4, 4)}
            for i, r in enumerate(refs):
                outputs[("pose_vec", anchor, r)] = vecs[:, i]
                T_anchor[r] = pose_vec_to_mat(vecs[:, i])
            for a, b in layout.pose_pairs:  # T_a_to_b = T_anchor_to_b · T_a_to_anchor
                T = torch.bmm(T_anchor[b], invert_pose(T_anchor[a]))
                outputs[("T", a, b)] = T
                outputs[("T", b, a)] = invert_pose(T)
        return outputs

    def _topic_poses(self, batch: Mapping[Any, Any]) -> dict[Any, torch.Tensor]:
        """``("T", a, b)`` from the bag's pose topic instead of the PoseNet (``pose.source: topic``).

        The batch holds ``("gt_pose", o)`` = ``T_{0→o}`` of the recorded frame (the camera's, or the
        body's when ``pose.camera_in_body`` is set), already mirrored for flipped clips. With the camera
        at ``X = T_camera_to_body``, the camera's motion is ``X⁻¹ T X``; a flipped clip sees the camera
        mirrored too (``F X F``), so its motion is conjugated by that. Translations are multiplied by
        ``pose.topic_scale`` (model units per metre): the network's depth ``1/(10σ + 0.01)`` learns
        fastest in its mid range, so metres are mapped there (1/30 ≈ monodepth2's self-found scale);
        metric depth is the output divided by ``topic_scale``.
        """
        missing = [o for o in self.layout.frames if ("gt_pose", o) not in batch]
        if missing:
            raise ValueError(
                f"pose.source: topic needs the bag's pose for frames {missing}; set data.gt_pose_topic (--pose-topic)"
            )
        T0 = {o: batch[("gt_pose", o)].to(torch.float32) for o in self.layout.frames}
        bsz = T0[0].shape[0]
        X = self.camera_in_body.to(T0[0].device).expand(bsz, 4, 4)
        if "flipped" in batch:
            flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], device=X.device))
            mirrored = torch.as_tensor(batch["flipped"], device=X.device).view(-1, 1, 1)
            X = torch.where(mirrored, flip @ X @ flip, X)
        Xi = invert_pose(X)
        out: dict[Any, torch.Tensor] = {}
        for a, b in self.layout.pose_pairs:
            T_body = torch.bmm(T0[b], invert_pose(T0[a]))  # T_{a→b} = T_{0→b} · T_{0→a}⁻¹
            T = torch.bmm(Xi, torch.bmm(T_body, X))
            T = T.clone()
            T[:, :3, 3] *= self.cfg.pose.topic_scale
            out[("T", a, b)] = T
            out[("T", b, a)] = invert_pose(T)
        return out

    def _gt_depth(self, batch: Mapping[Any, Any], frames: Sequence[int]) -> dict[Any, torch.Tensor]:
        """Depth outputs made of the bag's GT depth (``model.depth_source: ground_truth``, learning ladder).

        Invalid GT (0: sky, no return) becomes the network's far limit ``1 / disp_offset``; lower
        scales average inverse depth (as the network's multi-scale outputs are compared).
        """
        far = 1.0 / self.cfg.model.disp_offset
        out: dict[Any, torch.Tensor] = {}
        for f in frames:
            key = ("gt_depth", f)
            if key not in batch:
                raise ValueError(
                    f"model.depth_source: ground_truth needs GT depth for frame {f}; set data.gt_depth_topic"
                )
            d = batch[key].to(torch.float32)
            d = torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, far)).clamp(max=far)
            h, w = d.shape[-2:]
            for s in self.cfg.model.scales:
                ds = d if s == 0 else 1.0 / F.adaptive_avg_pool2d(1.0 / d, (-(-h // 2**s), -(-w // 2**s)))
                ones = torch.ones_like(ds)
                out[("depth", f, 0, s)], out[("conf", f, 0, s)] = ds, ones
                out[("depth_fused", f, s)], out[("conf_fused", f, s)] = ds, ones
        return out


def _pose_from_xyzq(v: Sequence[float]) -> torch.Tensor:
    """``4×4`` transform from ``[x, y, z, qx, qy, qz, qw]`` (a ROS pose)."""
    x, y, z, qx, qy, qz, qw = (float(a) for a in v)
    n = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if n < 1e-9:
        raise ValueError("pose.camera_in_body has a zero quaternion")
    qx, qy, qz, qw = qx / n, qy / n, qz / n, qw / n
    R = [
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)],
    ]
    T = torch.eye(4)
    T[:3, :3] = torch.tensor(R)
    T[:3, 3] = torch.tensor([x, y, z])
    return T


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------
class ExportModule(nn.Module):
    """The graph that is exported and served: ``image`` → fused depth and confidence (+ per branch).

    Input ``image`` float32 ``N×3×H×W`` RGB in [0, 1]. Returns a tuple, in this order: the fused
    depth ``N×1×H×W`` float32 (model units), the fused confidence ``N×1×H×W`` float32 in [0, 1],
    then with ``per_branch`` each branch's depth and confidence (branch 0 first). The names that
    the ONNX graph gives them live in :mod:`dualdepth_ros.inference.metadata`.

    The result equals :class:`DepthNet`'s ``("depth_fused", 0)``, ``("conf_fused", 0)``,
    ``("depth", b, 0)``, ``("conf", b, 0)`` (only scale 0 is computed). With ``precision="fp16"``
    the encoder and decoders run in float16 (the net's weights must already be float16:
    ``net.half()``), while the depth and confidence activations, the comparison of the
    confidences and the ``argmax`` run in float32: each branch's logits are cast to float32
    before the sigmoid, so near-equal confidences are not rounded to a tie, and the inputs and
    outputs stay float32.
    """

    def __init__(self, depth_net: DepthNet, per_branch: bool = False, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        if 0 not in depth_net.scales:
            raise ValueError("the exported graph needs the full-resolution scale 0 in the depth net's scales")
        self.net = depth_net
        self.per_branch = bool(per_branch)
        self.precision = precision
        self.compute_dtype = torch.float16 if precision == "fp16" else torch.float32

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        feats = net.encoder(image.to(self.compute_dtype))
        size = (image.shape[-2], image.shape[-1])
        depths: list[torch.Tensor] = []
        confs: list[torch.Tensor] = []
        for branch in net.branches:
            depth_logit, conf_logit = branch(feats, size)[0]
            depth_logit = depth_logit.float()
            depths.append(disp_to_depth(depth_logit, net.disp_scale, net.disp_offset))
            confs.append(torch.ones_like(depth_logit) if conf_logit is None else torch.sigmoid(conf_logit.float()))
        depth, conf = fuse_branches(depths, confs)
        res = [depth, conf]
        if self.per_branch:
            for d, c in zip(depths, confs):
                res += [d, c]
        return tuple(res)


# ---------------------------------------------------------------------------------------
# Size and cost
# ---------------------------------------------------------------------------------------
def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, *inputs: Any, backward: bool = False) -> int:
    """FLOPs (multiply and add counted separately: 2 per MAC) of ``module(*inputs)``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls; elementwise
    ops are not counted). With ``backward`` the backward pass of ``sum`` of the outputs is included.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = module(*inputs)
        if backward:
            leaves = [t for t in _tensors(out) if t.requires_grad]
            torch.autograd.backward([t.sum() for t in leaves])
    return int(counter.get_total_flops())


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []
