"""The instructed expert: MetaDrive's IDM policy whose longitudinal action obeys the instruction, whose steering
can be frozen with an offset (the recorder's perturbations) or replaced by another driver's (the bridge's
expert-supervised runs, where a model steers and IDM takes over when it strays). Runs in .venv-sim."""
from __future__ import annotations

from autoprune_sim import ros_contract as contract
from autoprune_sim.instructions import SLOW_DOWN, STOP

SLOW_FACTOR = 0.5  # "slow down": this fraction of IDM's target speed

_POLICY_CLASS = None


def instructed_idm_policy():
    """MetaDrive's IDMPolicy (imported lazily) with per-tick attributes set by its driver:
    - `instruction`: adjusts the longitudinal action (`adjust_longitudinal`);
    - `steer_offset`: while set, the steering is held at IDM's value when it was set plus the offset;
    - `steer_override`: while set (and no offset is), the steering is this value instead of IDM's.
    `expert_steering` holds IDM's own steering of the last call, whatever was applied."""
    global _POLICY_CLASS
    if _POLICY_CLASS is not None:
        return _POLICY_CLASS
    from metadrive.policy.idm_policy import IDMPolicy

    class InstructedIDMPolicy(IDMPolicy):
        instruction: str = contract.FOLLOW_LANE
        steer_offset: float | None = None
        steer_override: float | None = None
        expert_steering: float = 0.0
        _held_steering: float | None = None

        def act(self, *args, **kwargs):
            steering, acc = super().act(*args, **kwargs)
            self.expert_steering = float(steering)
            if self.steer_offset is None:
                self._held_steering = None
                if self.steer_override is not None:
                    steering = min(1.0, max(-1.0, self.steer_override))
            else:
                if self._held_steering is None:
                    self._held_steering = min(1.0, max(-1.0, float(steering) + self.steer_offset))
                steering = self._held_steering
            return [steering, adjust_longitudinal(self.instruction, float(acc), self.control_object.speed_km_h,
                                                  self.NORMAL_SPEED, self.DELTA)]

    _POLICY_CLASS = InstructedIDMPolicy
    return _POLICY_CLASS


def adjust_longitudinal(instruction: str, acc: float, speed_kmh: float, normal_kmh: float, delta: float) -> float:
    """The throttle_brake action in [-1, 1] for an instruction, given IDM's own action `acc`.

    "stop" brakes (harder the faster the car) and keeps braking once stopped; "slow down" takes the lower of IDM's
    action and the IDM free-road term for SLOW_FACTOR x the target speed, braking at most at -0.6.
    """
    acc = min(1.0, max(-1.0, acc))
    if instruction == STOP:
        return -min(1.0, 0.25 + 0.01 * max(speed_kmh, 0.0))
    if instruction == SLOW_DOWN:
        slow = 1.0 - (max(speed_kmh, 0.0) / (SLOW_FACTOR * normal_kmh)) ** delta
        return min(acc, max(-0.6, slow))
    return acc
