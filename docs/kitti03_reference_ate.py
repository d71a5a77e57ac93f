"""Reference ATEs on the KITTI 03 bag (runs/data/kitti03, a copy of ../shared/data/kitti_odometry_03/bag): no motion, and a constant
straight-ahead motion (any length: ATE is scale-aligned). Run from the repo root: .venv/bin/python docs/kitti03_reference_ate.py"""
import numpy as np
from dualdepth_ros import bagio
from dualdepth_ros.evaluation.pose import pose_ate
poses = []
for m in bagio.read_messages("runs/data/kitti03", ["/gt/pose"]):
    p = m.msg.pose
    T = np.eye(4); T[:3, :3] = bagio.quaternion_to_rotation([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])
    T[:3, 3] = [p.position.x, p.position.y, p.position.z]; poses.append(T)
gt = np.array(poses); n = len(gt)
still = np.repeat(np.eye(4)[None], n - 1, 0)
fwd = still.copy(); fwd[:, 2, 3] = 1.0  # T_{i+1→i}: camera i+1 sits 1 unit ahead (+z) of camera i
print("no motion", pose_ate(gt, still)); print("constant straight ahead", pose_ate(gt, fwd))
