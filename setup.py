"""ament_python package definition; also a plain `pip install` / `pip install -e .` target."""
import os

from setuptools import find_packages, setup

PACKAGE = "autoprune_ros"
SHARE = os.path.join("share", PACKAGE)


def share_tree(folder: str) -> list[tuple[str, list[str]]]:
    """Every file under `folder`, mapped to the same relative place under share/autoprune_ros/."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        kept = [os.path.join(root, f) for f in sorted(files) if not f.endswith((".pyc", ".pyo"))]
        if kept and "__pycache__" not in root:
            entries.append((os.path.join(SHARE, root), kept))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    description="A VLA driving model on a per-frame latency budget, with AutoPrune visual-token pruning, for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The closed-loop simulator code lives in sim/ and installs as the `autoprune_sim` package.
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]) + ["autoprune_sim"],
    package_dir={"autoprune_sim": "sim"},
    package_data={"autoprune_sim": ["routes/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (SHARE, ["package.xml"]),
        *share_tree("launch"),
        *share_tree("config"),
        *share_tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "autoprune_node = autoprune_ros.ros.node:main",
            "autoprune-replay = autoprune_ros.replay.cli:main",
            "autoprune-closed-loop = autoprune_sim.evaluate:main",
            "autoprune-bench = autoprune_ros.bench:main",
            "autoprune-demo = autoprune_sim.demo:main",
            "autoprune-train = autoprune_ros.vla.train:main",
        ],
    },
)
