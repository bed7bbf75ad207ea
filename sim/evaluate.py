"""`autoprune-closed-loop`: run the node in closed loop with a simulator and score its driving."""
from __future__ import annotations

import argparse
import sys

from autoprune_ros.cli import not_built_yet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="autoprune-closed-loop",
        description="Start a simulator bridge (MetaDrive, or CARLA against a running server) and the node as "
        "processes, drive routes and seeds for each policy configuration, and write results.json, a Markdown "
        "table and plots. Not built yet.")
    parser.add_argument("--simulator", choices=["metadrive", "carla"], default="metadrive")
    parser.parse_args(argv)
    return not_built_yet("autoprune-closed-loop", "closed-loop evaluation",
                         "Closed-loop evaluation: MetaDrive and CARLA bridges on the CARLA ROS contract")


if __name__ == "__main__":
    sys.exit(main())
