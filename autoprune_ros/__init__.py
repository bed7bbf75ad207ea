"""autoprune_ros: a VLA driving model on a per-frame latency budget, with AutoPrune visual-token pruning.

Sub-packages: `pruning` (the engine, pure torch), `vla` (model adapters and the driving policy), `runtime`
(per-frame pipeline and latency governor), `ros` (the rclpy node; the only place that imports rclpy),
`replay` (rosbag2 replay and regression reports). Importing this package stays cheap: no torch, no rclpy.
"""

__version__ = "0.1.0"
