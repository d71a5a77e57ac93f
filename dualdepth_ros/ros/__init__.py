"""The live ROS 2 side: ``depth_node``, its processing, QoS, diagnostics and scale recovery.

Modules (one job each):

* :mod:`.processing` — one camera frame (+ CameraInfo) → depth, confidence and the camera at the
  published resolution; shared by the node and ``dualdepth infer`` (no ROS imports).
* :mod:`.scale` — ``scale_mode`` none / fixed / camera_height (road-plane fit, smoothing).
* :mod:`.params` — the node's parameters: names, defaults, validation (config/depth.yaml mirrors them).
* :mod:`.convert` — numpy ↔ rclpy messages (Image, CameraInfo) filled from bytes.
* :mod:`.qos` — QoS profiles from parameters.
* :mod:`.diagnostics` — rates, latency percentiles, counters → ``diagnostic_msgs``.
* :mod:`.node` — the rclpy node (``depth_node``): subscriptions, newest-frame worker, publishers.
* :mod:`.infer` — ``dualdepth infer``: bag → bag with the node's outputs, no DDS.
* :mod:`.scoring` — the evaluation helpers reused here (metrics, colourisers), imported in one place.
* :mod:`.player` — plays a bag's camera topics through rclpy (demo, launch test, benchmark).
* :mod:`.demo` — ``dualdepth demo``: the node as its own process on the sample drive.

Importing this package imports nothing heavy; :mod:`.processing`, :mod:`.scale` and
:mod:`.infer` import neither rclpy nor torch.
"""
