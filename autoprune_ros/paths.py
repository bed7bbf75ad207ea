"""Where the package's installed data (config/, launch/, models/) lives, for every way it can be installed."""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "autoprune_ros"


def share_dir() -> Path:
    """The folder holding config/, launch/ and models/.

    A source checkout or `pip install -e .` uses the repository itself; `pip install .` and colcon put the data
    under <prefix>/share/autoprune_ros, found through the ament index when one is set up.
    """
    repo = Path(__file__).resolve().parent.parent
    if (repo / "package.xml").is_file() and (repo / "config").is_dir():
        return repo
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError):
        pass
    candidate = Path(sys.prefix) / "share" / PACKAGE
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(
        f"cannot find the {PACKAGE} share folder (config/, launch/, models/): install the package with "
        "`pip install .` or colcon, or run from a source checkout"
    )


def config_path(*parts: str) -> Path:
    """A file under the package's config/ folder."""
    return share_dir().joinpath("config", *parts)


BUILT_FROM_CONFIG = "tiny"  # the model name that means "build from config/models/tiny_llava.yaml, random weights"


def resolve_model(model: str) -> str:
    """The node's `model` value as something `load_vla` reads: 'tiny' stays; an existing folder is used as is;
    a bare name is looked up under the package's models/ folder (e.g. 'tiny_drive', the bundled driving VLA)."""
    if model == BUILT_FROM_CONFIG or Path(model).is_dir():
        return model
    bundled = share_dir() / "models" / model
    if "/" not in model and bundled.is_dir():
        return str(bundled)
    available = sorted(p.name for p in (share_dir() / "models").iterdir() if p.is_dir())
    raise FileNotFoundError(f"model {model!r} is neither a folder nor a bundled model (bundled: "
                            f"{', '.join(available) or 'none'}); pass 'tiny', a bundled name or a folder written by "
                            "autoprune-train / save_vla")
