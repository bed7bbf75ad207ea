"""`autoprune-replay`: replay rosbag2 / ROS 1 bags through the node's pipeline and gate on regressions."""
from __future__ import annotations

import argparse
import sys

from autoprune_ros.cli import not_built_yet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="autoprune-replay",
        description="Replay camera, instruction and odometry topics from a bag through the same pipeline the "
        "node runs (offline: deterministic, no drops; live: published on ROS with /clock), write report.json, "
        "a Markdown summary and plots, and exit non-zero on regressions. Not built yet.")
    parser.add_argument("bag", nargs="?", help="bag folder, .mcap, .db3 or ROS 1 .bag")
    parser.parse_args(argv)
    return not_built_yet("autoprune-replay", "rosbag replay", "Rosbag replay for offline regression")


if __name__ == "__main__":
    sys.exit(main())
