"""ROS 2 side of the package: nodes, message conversions, QoS, diagnostics. The only place that imports rclpy."""
