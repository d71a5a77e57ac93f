"""dualdepth_ros: self-supervised two-branch monocular depth for ROS 2 cameras."""

__version__ = "0.1.0"
