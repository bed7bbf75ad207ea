"""Leaderboard 2.0 route files: parsing the example file, subsets, lengths and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoprune_sim.routes import Route, load_routes, parse_routes, route_length, select_routes

EXAMPLE = Path(__file__).resolve().parent.parent / "sim" / "routes" / "example_town01.xml"


def doc(route_body: str, attrs: str = 'id="0" town="Town01"') -> str:
    return f"<routes><route {attrs}>{route_body}</route></routes>"


TWO_POINTS = '<waypoints><position x="0" y="0" z="0"/><position x="3" y="4" z="0"/></waypoints>'


def test_example_file_parses() -> None:
    routes = load_routes(EXAMPLE)
    assert [r.id for r in routes] == ["0", "1", "7"]
    assert all(r.town == "Town01" for r in routes)
    first = routes[0]
    assert first.waypoints == [(0.0, 0.0, 0.0), (100.0, 0.0, 0.0), (100.0, 50.0, 0.0)]
    assert [s.type for s in first.scenarios] == ["HardBreakRoute", "ParkedObstacle"]
    assert first.scenarios[0].trigger == (40.0, 0.0, 0.0, 0.0)
    assert first.scenarios[1].params == {"distance": {"value": "60"}, "direction": {"value": "right"}}
    assert len(first.weathers) == 2 and first.weathers[1]["precipitation"] == 30.0
    assert routes[1].scenarios == [] and routes[2].weathers == []


def test_route_lengths() -> None:
    # 0: 100 + 50 = 150 m; 1: hypot(30, 40) = 50 m; 7: 60 + 30 = 90 m
    assert [route_length(r) for r in load_routes(EXAMPLE)] == pytest.approx([150.0, 50.0, 90.0])
    # 3-D: (0,0,0) -> (2,3,6) is 7 m
    assert route_length(Route("x", "T", [(0.0, 0.0, 0.0), (2.0, 3.0, 6.0)])) == pytest.approx(7.0)


@pytest.mark.parametrize("subset,ids", [("0-3", ["0", "1"]), ("7", ["7"]), ("0-3,7", ["0", "1", "7"]),
                                        ("7,0", ["0", "7"]), (" 1 , 07 ", ["1", "7"]), ("0-0", ["0"])])
def test_subsets_follow_file_order(subset: str, ids: list[str]) -> None:
    assert [r.id for r in load_routes(EXAMPLE, subset)] == ids


@pytest.mark.parametrize("subset", ["5", "9-12", "", "0,,1", "3-1"])
def test_bad_subsets(subset: str) -> None:
    with pytest.raises(ValueError, match="example_town01.xml"):
        load_routes(EXAMPLE, subset)


def test_non_numeric_ids_select_exactly() -> None:
    text = ("<routes>" + "".join(f'<route id="{i}" town="T">{TWO_POINTS}</route>' for i in ("a-1", "b")) +
            "</routes>")
    assert [r.id for r in select_routes(parse_routes(text), "a-1")] == ["a-1"]


@pytest.mark.parametrize("text,message", [
    ("<routes><route", "not valid XML"),
    ("", "not valid XML"),
    ("<scenarios/>", "expected <routes>"),
    ("<routes></routes>", "no <route>"),
    (doc(TWO_POINTS, 'town="T"'), "lacks an id"),
    (doc(TWO_POINTS, 'id="3"'), "lacks a town"),
    (doc(""), "no <waypoints>"),
    (doc('<waypoints><position x="0" y="0" z="0"/></waypoints>'), "at least 2 waypoints, has 1"),
    (doc('<waypoints><position x="0" y="0" z="0"/><position x="abc" y="0" z="0"/></waypoints>'),
     "waypoint 1: <position> x='abc' is not a number"),
    (doc('<waypoints><position x="0" y="0"/><position x="1" y="0" z="0"/></waypoints>'), "lacks the attribute 'z'"),
    (doc('<waypoints><position x="nan" y="0" z="0"/><position x="1" y="0" z="0"/></waypoints>'), "not finite"),
    (doc(TWO_POINTS + '<scenarios><scenario name="s" type="t"/></scenarios>'), "no <trigger_point>"),
    (doc(TWO_POINTS + '<scenarios><scenario name="s"><trigger_point x="0" y="0" z="0" yaw="0"/></scenario>'
         '</scenarios>'), "needs both name and type"),
    (doc(TWO_POINTS + '<scenarios><scenario name="s" type="t"><trigger_point x="0" y="0" z="0"/></scenario>'
         '</scenarios>'), "lacks the attribute 'yaw'"),
    (doc(TWO_POINTS + '<weathers><weather cloudiness="lots"/></weathers>'), "weather #0"),
    ("<routes>" + 2 * f'<route id="1" town="T">{TWO_POINTS}</route>' + "</routes>", "more than once"),
])
def test_errors_name_the_file_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad_routes.xml"
    path.write_text(text)
    with pytest.raises(ValueError) as excinfo:
        load_routes(path)
    assert str(path) in str(excinfo.value)
    assert message in str(excinfo.value)


def test_missing_file_is_a_value_error_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read route file"):
        load_routes(tmp_path / "nope.xml")


def test_error_names_the_route() -> None:
    text = ("<routes>" + f'<route id="ok" town="T">{TWO_POINTS}</route>'
            '<route id="broken" town="T"><waypoints/></route></routes>')
    with pytest.raises(ValueError, match=r"<mine>: route #1 \(id 'broken'\): needs at least 2 waypoints"):
        parse_routes(text, "<mine>")
