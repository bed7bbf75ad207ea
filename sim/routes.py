"""CARLA Leaderboard 2.0 route files: parsing, subsets and lengths.

Format::

    <routes>
      <route id="0" town="Town01">
        <weathers><weather route_percentage="0" cloudiness="5" .../></weathers>
        <waypoints><position x="..." y="..." z="..."/>...</waypoints>
        <scenarios>
          <scenario name="..." type="..."><trigger_point x="" y="" z="" yaw=""/>...</scenario>
        </scenarios>
      </route>
    </routes>

Every problem is a ValueError naming the file and what is wrong. Only the standard library is used (the
simulator bridges import this module in their own environment).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

Point3 = tuple[float, float, float]


@dataclass
class Scenario:
    """A scenario of a route: its trigger pose (x, y, z, yaw in degrees) and its other parameters as raw
    attributes per child tag (e.g. {"distance": {"value": "60"}})."""

    name: str
    type: str
    trigger: tuple[float, float, float, float]
    params: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Route:
    """One route: id, town, the waypoint polyline, its scenarios and weather keyframes (numeric attributes)."""

    id: str
    town: str
    waypoints: list[Point3]
    scenarios: list[Scenario] = field(default_factory=list)
    weathers: list[dict[str, float]] = field(default_factory=list)


def route_length(route: Route) -> float:
    """Length in metres of the 3-D polyline through the waypoints. The Leaderboard measures the route after
    interpolating it along the roads, so for sparse waypoints this is a lower bound of its length."""
    return sum(math.dist(a, b) for a, b in zip(route.waypoints[:-1], route.waypoints[1:], strict=True))


def _number(elem: ET.Element, attr: str, where: str) -> float:
    raw = elem.get(attr)
    if raw is None:
        raise ValueError(f"{where}: <{elem.tag}> lacks the attribute {attr!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where}: <{elem.tag}> {attr}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{elem.tag}> {attr}={raw!r} is not finite")
    return value


def _parse_route(elem: ET.Element, source: str, index: int) -> Route:
    route_id = elem.get("id")
    where = f"{source}: route #{index}" + (f" (id {route_id!r})" if route_id is not None else "")
    if not route_id:
        raise ValueError(f"{where}: <route> lacks an id")
    town = elem.get("town")
    if not town:
        raise ValueError(f"{where}: <route> lacks a town")
    waypoints_elem = elem.find("waypoints")
    if waypoints_elem is None:
        raise ValueError(f"{where}: no <waypoints> (a Leaderboard 1.0 file with <waypoint> children is not supported)")
    waypoints = []
    for i, pos in enumerate(waypoints_elem.findall("position")):
        at = f"{where}, waypoint {i}"
        waypoints.append((_number(pos, "x", at), _number(pos, "y", at), _number(pos, "z", at)))
    if len(waypoints) < 2:
        raise ValueError(f"{where}: needs at least 2 waypoints, has {len(waypoints)}")
    scenarios = []
    scenarios_elem = elem.find("scenarios")
    for i, sc in enumerate([] if scenarios_elem is None else scenarios_elem.findall("scenario")):
        name, kind = sc.get("name"), sc.get("type")
        at = f"{where}, scenario #{i}" + (f" ({name!r})" if name else "")
        if not name or not kind:
            raise ValueError(f"{at}: <scenario> needs both name and type")
        trigger_elem = sc.find("trigger_point")
        if trigger_elem is None:
            raise ValueError(f"{at}: no <trigger_point>")
        trigger = tuple(_number(trigger_elem, a, at) for a in ("x", "y", "z", "yaw"))
        params = {child.tag: dict(child.attrib) for child in sc if child.tag != "trigger_point"}
        scenarios.append(Scenario(name=name, type=kind, trigger=trigger, params=params))  # type: ignore[arg-type]
    weathers = []
    weathers_elem = elem.find("weathers")
    for i, weather in enumerate([] if weathers_elem is None else weathers_elem.findall("weather")):
        at = f"{where}, weather #{i}"
        weathers.append({key: _number(weather, key, at) for key in weather.attrib})
    return Route(id=route_id, town=town, waypoints=waypoints, scenarios=scenarios, weathers=weathers)


def parse_routes(text: str | bytes, source: str = "<string>") -> list[Route]:
    """All routes in a route-file document, in file order; `source` names it in error messages."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"{source}: not valid XML ({exc})") from None
    if root.tag != "routes":
        raise ValueError(f"{source}: the root element is <{root.tag}>, expected <routes>")
    elems = root.findall("route")
    if not elems:
        raise ValueError(f"{source}: no <route> elements")
    routes = [_parse_route(elem, source, i) for i, elem in enumerate(elems)]
    seen: set[str] = set()
    for route in routes:
        if route.id in seen:
            raise ValueError(f"{source}: route id {route.id!r} appears more than once")
        seen.add(route.id)
    return routes


def select_routes(routes: list[Route], subset: str, source: str = "<routes>") -> list[Route]:
    """The routes named by `subset`, in file order: comma-separated ids or inclusive integer id ranges ("0-3,7",
    as the Leaderboard's --routes-subset). Ids compare as integers when both sides are integers ("07" = "7").
    A named id that does not exist, or a range that matches nothing, is an error."""
    items = [item.strip() for item in subset.split(",")]
    if not subset.strip() or any(not item for item in items):
        raise ValueError(f"{source}: bad route subset {subset!r} (expected ids or ranges like '0-3,7')")

    def as_int(text: str) -> int | None:
        try:
            return int(text)
        except ValueError:
            return None

    chosen: set[str] = set()
    for item in items:
        lo_text, dash, hi_text = item.partition("-")
        lo, hi = as_int(lo_text), as_int(hi_text)
        if dash and lo is not None and hi is not None:
            if hi < lo:
                raise ValueError(f"{source}: route range {item!r} is empty (end before start)")
            hits = {r.id for r in routes if (n := as_int(r.id)) is not None and lo <= n <= hi}
        else:
            number = as_int(item)
            hits = {r.id for r in routes if r.id == item or (number is not None and as_int(r.id) == number)}
        if not hits:
            raise ValueError(f"{source}: no route matches {item!r} (ids: {', '.join(r.id for r in routes)})")
        chosen |= hits
    return [r for r in routes if r.id in chosen]


def load_routes(path: str | Path, subset: str | None = None) -> list[Route]:
    """Routes of a Leaderboard 2.0 route file, optionally only those in `subset` (see `select_routes`)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{source}: cannot read route file ({exc.strerror or exc})") from exc
    routes = parse_routes(data, source)
    return routes if subset is None else select_routes(routes, subset, source)
