#!/usr/bin/env bash
# Builds the project's own interface packages (msgs/*) into a virtual environment that serves as the ROS
# prefix, with cmake + rosidl. A package is skipped when it is already importable and was not built by us
# (a real ROS install provides it), or when our build of the same sources is already installed.
# Usage: scripts/build_interfaces.sh VENV [BUILD_DIR]
set -euo pipefail
venv=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
build_root=${2:-$repo/build/interfaces/$(basename "$venv")}
py=$venv/bin/python
export VIRTUAL_ENV=$venv AMENT_PREFIX_PATH=$venv PATH=$venv/bin:$PATH

patched_cmake=0
fix_wheel_cmake_paths() {
  # The ROS wheels' CMake exports name the include dirs of the machine that built the wheels.
  [ $patched_cmake = 1 ] && return
  local pyinc npinc
  pyinc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  npinc=$("$py" -c "import numpy; print(numpy.get_include())")
  grep -rl '/opt/python/cp311-cp311' "$venv/share" --include='*.cmake' | xargs -r sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/core/include#$npinc#g"
  patched_cmake=1
}

for src in "$repo"/msgs/*/; do
  pkg=$(basename "$src")
  digest=$(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  marker=$venv/share/$pkg/.autoprune_interfaces_digest
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$digest" ] && "$py" -c "import $pkg.msg" 2>/dev/null; then
    echo "interfaces: $pkg up to date"
    continue
  fi
  if [ ! -f "$marker" ] && "$py" -c "import $pkg.msg" 2>/dev/null; then
    echo "interfaces: $pkg provided by the ROS installation; not building ours"
    continue
  fi
  echo "interfaces: building $pkg (cmake + rosidl, ~15-40 s)"
  fix_wheel_cmake_paths
  mkdir -p "$build_root"; start=$SECONDS
  cmake -S "$src" -B "$build_root/$pkg" -G Ninja -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -Wno-dev > "$build_root/$pkg.log" 2>&1 \
    && cmake --build "$build_root/$pkg" -j"$(nproc)" >> "$build_root/$pkg.log" 2>&1 \
    && cmake --install "$build_root/$pkg" >> "$build_root/$pkg.log" 2>&1 \
    || { echo "interfaces: building $pkg failed; last lines of $build_root/$pkg.log:" >&2
         tail -25 "$build_root/$pkg.log" >&2; exit 1; }
  "$py" -c "import $pkg.msg" || { echo "interfaces: $pkg built but does not import" >&2; exit 1; }
  echo "$digest" > "$marker"
  echo "interfaces: $pkg installed into $(basename "$venv") in $((SECONDS - start)) s"
done
