"""The tiny two-branch training configuration that the training tests share (96×32, resnet10 at width 8).

:data:`TINY_MODEL` is the model, pose net and batch size of a run that trains in seconds on a CPU; a test adds
its own ``train.*`` overrides (logging, checkpoints, validation clips) after it.
"""

from __future__ import annotations

#: ``load_config`` overrides: 96×32 input, resnet10 depth and pose encoders at width 8, batch 2, no workers.
TINY_MODEL = [
    "input.width=96",
    "input.height=32",
    "model.encoder=resnet10",
    "model.encoder_width=8",
    "model.decoder_channels=[8,8,16,16,16]",
    "pose.encoder=resnet10",
    "pose.encoder_width=8",
    "optim.batch_size=2",
    "train.num_workers=0",
]
