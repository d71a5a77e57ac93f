"""Launch depth_node on a camera (and rviz2 with rviz:=true).

    ros2 launch dualdepth_ros depth.launch.py image:=/camera/image_raw camera_info:=/camera/camera_info
    ros2 launch dualdepth_ros depth.launch.py image_transport:=compressed camera_height_m:=1.65 rviz:=true

Arguments left empty ('') take their value from the parameters file (params_file, by default
the package's config/depth.yaml); a non-empty one overrides it. dds_profile picks the node's Fast
DDS transport settings for large camera frames (config/dds/README.md): udp (default: works with a
stock camera driver; raise net.core.rmem_max), shm (the camera driver must use
config/dds/fastdds_shm.xml too) or off; a Fast DDS profile of your own
(FASTRTPS_DEFAULT_PROFILES_FILE) is always left in place. The outputs (depth/image,
depth/camera_info, confidence/image, confidence/camera_info, depth/preview) are relative
names, so namespace:=camera publishes /camera/depth/image.
"""

from __future__ import annotations

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "dualdepth_ros"

#: Optional overrides of the parameters file: launch argument → (parameter, type, help).
OVERRIDES = {
    "image_transport": ("image_transport", str, "raw or compressed (subscribe to <image>/compressed)"),
    "model_path": ("model_path", str, "model folder with model.onnx + model.json"),
    "engine_path": ("engine_path", str, "TensorRT engine file or folder"),
    "backend": ("backend", str, "auto, tensorrt, onnxruntime or torch"),
    "precision": ("precision", str, "fp32 or fp16"),
    "scale_mode": ("scale_mode", str, "none, fixed or camera_height"),
    "camera_height_m": ("camera_height_m", float, "camera height above the road, metres"),
}


def _node(context: LaunchContext) -> list[Node]:
    cfg = context.launch_configurations
    overrides = {}
    for arg, (param, kind, _) in OVERRIDES.items():
        value = cfg.get(arg, "").strip()
        if value:
            overrides[param] = kind(value)
    image = cfg["image"]
    dds_profile = cfg.get("dds_profile", "udp").strip() or "udp"
    return [
        Node(
            package=PACKAGE,
            executable="depth_node",
            name=cfg["node_name"],
            namespace=cfg["namespace"],
            output="screen",
            emulate_tty=True,
            parameters=[cfg["params_file"], overrides],
            remappings=[
                ("image", image),
                ("image/compressed", image.rstrip("/") + "/compressed"),
                ("camera_info", cfg["camera_info"]),
            ],
            ros_arguments=["--log-level", cfg["log_level"]],
            additional_env={"DUALDEPTH_DDS_PROFILE": dds_profile},
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    args = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic (raw name)"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "depth.yaml"]),
            description="parameters file of depth_node",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
        DeclareLaunchArgument("node_name", default_value="depth_node", description="node name"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument(
            "dds_profile",
            default_value="udp",
            description="Fast DDS settings for large frames (config/dds): udp (any camera driver), shm (the driver "
            "uses config/dds/fastdds_shm.xml too) or off; FASTRTPS_DEFAULT_PROFILES_FILE of your own wins",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="also start rviz2 with config/depth.rviz"),
        DeclareLaunchArgument(
            "rviz_config",
            default_value=PathJoinSubstitution([share, "config", "depth.rviz"]),
            description="rviz2 configuration",
        ),
    ]
    args += [
        DeclareLaunchArgument(arg, default_value="", description=f"{help_text} ('' = from params_file)")
        for arg, (_, _, help_text) in OVERRIDES.items()
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", LaunchConfiguration("rviz_config")],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription([*args, OpaqueFunction(function=_node), rviz])
