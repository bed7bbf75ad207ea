"""The bridge's expert-supervised runs, recorded as training episodes (DAgger-style data collection).

The driver under test (the node) steers; MetaDrive's instructed IDM expert keeps the speed and takes the wheel
whenever the car strays from the lane it steers for (`takeover.Takeover`), then hands it back. Every tick is
written as the expert recorder writes its episodes (`episode_bag`, docs/data.md) with `"targets": "reference"`,
so training labels each frame, the model's own mistakes included, with the way back to the lane. Runs in
.venv-sim.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from autoprune_sim.episode_bag import EpisodeBag
from autoprune_sim.metadrive_env import STEP_S
from autoprune_sim.record_expert import (
    CRASH_KEYS,
    REFERENCE_TARGETS,
    STAGING_DIR,
    episode_name,
    episode_outcome,
    finalize,
    kept,
)
from autoprune_sim.reference_path import expert_lane, lane_ahead
from autoprune_sim.takeover import Takeover, deviation_ahead


class SupervisedRecording:
    """Records one supervised run of `env` (made with the instructed IDM policy as its agent policy) into
    `output_dir/<episode name>`, staged under STAGING_DIR until `finish`. Call per tick: `observe` before the
    driver's control is known, `drive` with it, `stepped` after the simulator step."""

    def __init__(self, env, output_dir: Path, takeover: Takeover, meta: dict[str, Any]) -> None:
        self.env, self.output_dir, self.takeover, self.meta = env, Path(output_dir), takeover, meta
        self.policy = env.engine.agent_manager.get_policy(env.vehicle.id)
        if not hasattr(self.policy, "steer_override"):
            raise TypeError("the environment's agent policy must be expert_policy.instructed_idm_policy()")
        self.partial = self.output_dir / STAGING_DIR / episode_name(meta["seed"], meta["map"])
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.bag = EpisodeBag(self.partial, STEP_S).open()
        self.crashed = self.off_road = self.arrived = False
        self._stamp = None
        self._ticks = 0
        self._model_steer: list[tuple[float, float]] = []  # (driver's steer, expert's steer) where the driver steered

    def observe(self, tick: int, image_rgb: np.ndarray, state: Any, instruction: str) -> None:
        """Write tick `tick`'s frame and decide who steers it."""
        path = lane_ahead(self.env, expert_lane(self.env, self.policy))
        self._stamp = self.bag.write_frame(tick, image_rgb, state, path, instruction)
        self.takeover.update(tick, deviation_ahead(path, state.x, state.y, state.yaw, state.speed, self.bag.yaw_rate))
        self.policy.instruction = instruction
        self._ticks = tick + 1

    def drive(self, steer_md: float) -> None:
        """The driver's steering for this tick (MetaDrive units, left positive); ignored while the expert has
        taken over."""
        self.policy.steer_override = None if self.takeover.active else float(steer_md)

    def stepped(self, info: dict) -> None:
        """Write the control the simulator applied at this tick."""
        vehicle = self.env.vehicle
        self.bag.write_control(self._stamp, vehicle.steering, vehicle.throttle_brake)
        if self.policy.steer_override is not None:
            self._model_steer.append((self.policy.steer_override, self.policy.expert_steering))
        self.crashed |= any(bool(info.get(key)) for key in CRASH_KEYS)
        self.off_road |= bool(info.get("out_of_road"))
        self.arrived |= bool(info.get("arrive_dest"))

    def abandon(self) -> None:
        """Close the bag of a run that ended in an error; the episode stays staged (the next run replaces it)."""
        self.bag.close()

    def finish(self, route_completion: float, route_length_m: float) -> dict[str, Any]:
        """Close the bag and move the episode into place (crashed ones under _dropped/, as the recorder does);
        returns its episode.json plus "folder"."""
        self.bag.close()
        outcome = episode_outcome(self.crashed, self.off_road, self.arrived)
        steer = np.asarray(self._model_steer).reshape(-1, 2)
        steer_mae = round(float(np.abs(steer[:, 0] - steer[:, 1]).mean()), 4) if len(steer) else None
        meta = {
            **self.meta, "name": episode_name(self.meta["seed"], self.meta["map"]), "ticks": self._ticks,
            "dt_s": STEP_S, "outcome": outcome, "route_completion": round(route_completion, 4),
            "route_length_m": round(route_length_m, 2),
            # the driver's mistakes are this episode's perturbations: off-road endings keep their frames
            "kept": kept(outcome, True, REFERENCE_TARGETS), "segments": self.bag.segments,
            "targets": REFERENCE_TARGETS, "schedule": [], "perturbations": [],
            "driver": "supervised", "takeovers": self.takeover.spans,
            "expert_steer_share": round(self.takeover.ticks() / max(1, self._ticks), 4),
            "driver_expert_steer_mae": steer_mae,
        }
        target = finalize(meta, self.partial, self.output_dir, keep_dropped=False)
        try:
            (self.output_dir / STAGING_DIR).rmdir()
        except OSError:  # another run is staging there
            pass
        return {**meta, "folder": str(target)}
