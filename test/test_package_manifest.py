"""package.xml and setup.py describe the package truthfully, for colcon, pip and rosdep."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CODE_DIRS = ("autoprune_ros", "sim", "launch")
# ROS Python packages that are not message packages in the ament index.
ROS_PYTHON = {"rclpy", "launch", "launch_ros", "ament_index_python"}
REQUIRED_EXEC = {"rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "diagnostic_msgs",
                 "ackermann_msgs", "carla_msgs"}


def _manifest() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _declared(*tags: str) -> set[str]:
    return {e.text.strip() for tag in tags for e in _manifest().iter(tag)}


def _imported_top_level() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in CODE_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _ros_packages() -> set[str]:
    from ament_index_python.packages import get_packages_with_prefixes

    return set(get_packages_with_prefixes()) | ROS_PYTHON


def test_manifest_is_format_3_ament_python() -> None:
    root = _manifest()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "autoprune_ros"
    assert root.find("export/build_type").text == "ament_python"
    assert _declared("buildtool_depend") >= {"ament_python"}
    assert _declared("exec_depend", "depend") >= REQUIRED_EXEC
    assert _declared("test_depend") >= {"ament_copyright", "ament_flake8", "ament_pep257", "python3-pytest"}


def test_every_imported_ros_package_is_declared() -> None:
    declared = _declared("exec_depend", "depend")
    missing = {name: files for name, files in _imported_top_level().items()
               if name in _ros_packages() and name != "autoprune_ros" and name not in declared}
    assert not missing, f"imported but not in package.xml: {missing}"


def test_every_declared_ros_package_exists() -> None:
    ros_deps = {d for d in _declared("exec_depend", "depend") if not d.startswith("python3-")}
    unknown = ros_deps - _ros_packages()
    assert not unknown, f"package.xml names packages that no ROS prefix provides: {unknown}"


def _project_files() -> list[str]:
    """Files a clone would have: tracked ones plus new ones not ignored."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    return [rel for rel in listing.split() if (REPO / rel).is_file()]


def _copy_sources(dest: Path) -> Path:
    for rel in _project_files():
        if rel.split("/")[0] in {"test", "msgs", "docs", ".ci"}:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def _assert_share_layout(prefix: Path) -> None:
    share = prefix / "share" / "autoprune_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "autoprune.launch.py").is_file()
    assert (share / "config" / "fastdds.xml").is_file() and (share / "config" / "autoprune.yaml").is_file()
    assert (share / "config" / "models" / "tiny_llava.yaml").is_file()
    assert (share / "models" / "README.md").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "autoprune_ros").is_file()


def test_colcon_style_install_puts_data_under_share(tmp_path) -> None:
    """What colcon's ament_python build runs: setup.py install into a prefix, scripts into lib/<package>."""
    src = _copy_sources(tmp_path / "src")
    prefix = tmp_path / "install"
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "build"),
                    "install", "--prefix", str(prefix), "--record", str(tmp_path / "record.txt"),
                    "--single-version-externally-managed"], cwd=src, check=True, capture_output=True)
    _assert_share_layout(prefix)
    assert (prefix / "lib" / "autoprune_ros" / "autoprune_node").is_file(), "ros2 run looks in lib/<package>"
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "autoprune_ros" / "ros" / "node.py").is_file() and (site / "autoprune_sim").is_dir()


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-editable"])
def test_pip_install(tmp_path, editable: bool) -> None:
    src = _copy_sources(tmp_path / "src")
    prefix = tmp_path / "prefix"
    args = ["-e", str(src)] if editable else [str(src)]
    # --ignore-installed: without it pip first uninstalls the environment's own autoprune_ros.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", "--prefix", str(prefix), *args], check=True, capture_output=True)
    assert (prefix / "bin" / "autoprune_node").is_file() and (prefix / "bin" / "autoprune-replay").is_file()
    if not editable:
        _assert_share_layout(prefix)


def test_no_tracked_file_holds_a_path_of_this_machine() -> None:
    needles = {str(REPO.parent) + "/", str(Path.home()) + "/"}
    offenders = [rel for rel in _project_files() if any(n in (REPO / rel).read_text(errors="ignore") for n in needles)]
    assert not offenders, f"machine-specific paths in {offenders}"
