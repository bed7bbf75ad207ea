"""The latency governor: turns a per-frame latency budget (ms) into a visual-token budget T, frame by frame.

A frame's latency is pre-processing + model (prefill and decoding) + post-processing. The model part is close to
linear in the kept token-layers x (the sum over decoder layers of the visual tokens kept, i.e. about T * L), so an
online linear cost model ``model_ms ~ a + b*x`` (recursive least squares with exponential forgetting) predicts the
mean model latency of any budget, and a high quantile (default p99.9) of the recent frames' "frame latency minus
predicted mean model latency" (model noise + pre + post, measured together) gives the tail on top. Each frame the
governor picks the largest budget whose predicted tail frame latency fits

    predict(x(T)) + tail(model noise + pre + post) <= latency_budget - safety_margin,

moves down at once when the current budget stops fitting (safety first), and moves up only by a clear step
(hysteresis), so measurement noise does not make the budget oscillate. When not even ``min_tokens`` fits it holds
``min_tokens`` and says so (``Choice.feasible`` False, ``diagnostics()`` at WARN).

The default quantile is p99.9, not p99: the target is zero deadline misses while feasible, and in simulation
(Gaussian noise, 28,500 frames) p99 missed 10 frames and p99.9 none, for about 4% fewer tokens.

Pure Python + numpy: no ROS, no torch. All times are milliseconds.
"""
from __future__ import annotations

import math
import numbers
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

__all__ = [
    "Choice",
    "CostModel",
    "GovernorDiagnostics",
    "LatencyGovernor",
    "TailEstimator",
]

DIAG_OK, DIAG_WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels


def _real(name: str, value: float, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _int(name: str, value: int, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


class TailEstimator:
    """A high quantile of the last `window` values of a noisy quantity (pre/post time, prediction errors).

    The tail is max(empirical quantile, mean + z_q * std_upper): the empirical quantile covers heavy tails, the
    Gaussian one covers quantiles a short window cannot resolve (p99.9 of 100 samples is their maximum), and
    std_upper is the std's one-sided 95% upper confidence bound, since a short window underestimates the spread
    often enough to matter at a deadline.

    With `shift_threshold` (h, in std units) a CUSUM (allowance 0.5 std; 2h for downward shifts, the safe
    direction) watches for a level shift, e.g. pre-processing slowed by CPU load. On an alarm the older values
    are moved to the new level, keeping the window's noise shape, instead of waiting `window` frames for them to
    age out; the shift is re-estimated over the next `REFINE` values from their mean, biased by one standard
    error toward the larger (safe) side.
    """

    REFINE = 5

    def __init__(self, window: int = 100, quantile: float = 0.999, *, shift_threshold: float | None = None,
                 min_samples: int = 20) -> None:
        self.window = _int("window", window, low=2)
        self.quantile = _real("quantile", quantile, low=0.5, high=1.0, high_open=True)
        self.shift_threshold = (None if shift_threshold is None
                                else _real("shift_threshold", shift_threshold, low=0.0, low_open=True))
        self.min_samples = _int("min_samples", min_samples, low=2)
        self._z = NormalDist().inv_cdf(self.quantile)
        self._values: deque[float] = deque(maxlen=self.window)
        self._tail: float | None = None
        self._cusum_up = self._cusum_down = 0.0
        self._old: list[float] = []  # values before a detected shift, while it is being re-estimated
        self._post: list[float] = []  # values since the shift
        self.shifts = 0

    def __len__(self) -> int:
        return len(self._values)

    def update(self, value: float) -> None:
        value = float(value)
        self._tail = None
        if self._post:
            self._post.append(value)
            self._relevel()
            return
        if self.shift_threshold is not None and self._shift_detected(value):
            self._old, self._post = list(self._values), [value]
            self._relevel()
            self.shifts += 1
            return
        self._values.append(value)

    def _shift_detected(self, value: float) -> bool:
        if len(self._values) < self.min_samples:
            return False
        std = self.std
        if std <= 0:
            return False
        z = (value - self.mean) / std
        self._cusum_up = max(0.0, self._cusum_up + z - 0.5)
        self._cusum_down = max(0.0, self._cusum_down - z - 0.5)
        if self._cusum_up > self.shift_threshold or self._cusum_down > 2.0 * self.shift_threshold:
            self._cusum_up = self._cusum_down = 0.0
            return True
        return False

    def _relevel(self) -> None:
        old = np.asarray(self._old, dtype=float)
        delta = float(np.mean(self._post)) - float(old.mean())
        delta += float(old.std(ddof=1)) / math.sqrt(len(self._post)) if len(old) > 1 else 0.0
        keep = max(0, self.window - len(self._post))
        shifted = (old + delta).tolist()[len(old) - keep:] if keep else []
        self._values = deque(shifted + self._post, maxlen=self.window)
        if len(self._post) >= self.REFINE:
            self._old, self._post = [], []

    def clear(self) -> None:
        self._values.clear()
        self._tail = None
        self._cusum_up = self._cusum_down = 0.0
        self._old, self._post = [], []

    @property
    def mean(self) -> float:
        return float(np.mean(self._values)) if self._values else 0.0

    @property
    def std(self) -> float:
        return float(np.std(self._values, ddof=1)) if len(self._values) > 1 else 0.0

    @property
    def max(self) -> float:
        return max(self._values) if self._values else 0.0

    @property
    def tail(self) -> float:
        """The tail estimate; 0.0 with no data."""
        if self._tail is None:
            if not self._values:
                return 0.0
            values = np.fromiter(self._values, dtype=float)
            empirical = float(np.quantile(values, self.quantile))
            std_upper = self.std * (1.0 + 1.645 / math.sqrt(2.0 * max(1, len(values) - 1)))
            self._tail = max(empirical, self.mean + self._z * std_upper)
        return self._tail


class CostModel:
    """Online model of the model latency vs kept token-layers x: ``ms ~ a + b*x`` plus a tail margin.

    - Warm-up (before any calibration): the (x, ms) samples are collected and the prediction is the larger of a
      least-squares line through them and a line through the origin and the latest samples (latency proportional
      to x), which over-predicts larger x whenever there is a fixed cost, so a governor ramping up from its
      minimum budget moves up cautiously. Once `min_residuals` samples span at least 20% in x they become the
      calibration set (`calibrate`), and the model switches to RLS.
    - Fit: recursive least squares with exponential forgetting (``forgetting`` 0.9-0.98, memory ~1/(1-f) frames),
      in normalised x (x / x_scale) for conditioning. The covariance trace is capped so that long runs at a
      constant budget (no excitation) cannot wind it up. b is kept >= 0 (latency never falls with more tokens):
      a negative slope is projected to 0 keeping the prediction at the current x.
    - Tail: ``predict_tail(x) = predict(x) + margin``, margin = max(0, tail of the last `window` one-step-ahead
      residuals observed - predicted), i.e. the honest forecast error including the fit's own lag.
    - Changes (CPU clock, thermal throttling, load): a residual far outside the noise (> `change_sigmas` std and
      > `change_rel` of the prediction) is a regime change: the whole curve is rescaled by observed/predicted (a
      clock change scales every cost), the covariance is boosted so RLS refines it quickly, and the residual
      window restarts (its old residuals describe the old regime) with the old margin, rescaled, as a floor until
      `min_residuals` new ones are in. A slowdown is acted on at its first frame; a speed-up (the safe direction)
      needs two consecutive frames, so one fast outlier cannot lower the predictions.
    """

    def __init__(self, *, forgetting: float = 0.95, quantile: float = 0.999, window: int = 100,
                 x_scale: float | None = None, slope_prior: float = 0.0, min_residuals: int = 20,
                 change_sigmas: float = 6.0, change_rel: float = 0.15, initial_margin_frac: float = 0.1) -> None:
        self.forgetting = _real("forgetting", forgetting, low=0.0, high=1.0, low_open=True)
        self.window = _int("window", window, low=2)
        self.min_residuals = _int("min_residuals", min_residuals, low=2)
        self.slope_prior = _real("slope_prior", slope_prior, low=0.0)
        self.change_sigmas = _real("change_sigmas", change_sigmas, low=0.0, low_open=True)
        self.change_rel = _real("change_rel", change_rel, low=0.0)
        self.initial_margin_frac = _real("initial_margin_frac", initial_margin_frac, low=0.0)
        self.x_scale = None if x_scale is None else _real("x_scale", x_scale, low=0.0, low_open=True)
        self._residuals = TailEstimator(self.window, quantile)
        self._theta = np.zeros(2)  # [a, b * x_scale]
        self._P = np.eye(2)
        self._p_max = 10.0
        self._warmup: deque[tuple[float, float]] = deque(maxlen=max(self.window, self.min_residuals))
        self._proportional: float | None = None  # warm-up: ms per x through the origin and the latest samples
        self._floor = 0.0  # margin floor while the residual window is short
        self._settle = 0  # frames after a change whose residuals are transient, not noise
        self._pending_fast: float | None = None  # ratio of a first fast outlier awaiting confirmation
        self.n_obs = 0
        self.changes = 0
        self.calibrated = False  # True once a calibration set with a spread of x has fixed the slope

    @property
    def quantile(self) -> float:
        return self._residuals.quantile

    @property
    def a(self) -> float:
        """Fixed cost (ms)."""
        return float(self._theta[0])

    @property
    def b(self) -> float:
        """Cost per kept token-layer (ms)."""
        return float(self._theta[1]) / (self.x_scale or 1.0)

    @property
    def ready(self) -> bool:
        """True once there is any data to predict from."""
        return self.n_obs > 0

    def _phi(self, x: float) -> np.ndarray:
        return np.array([1.0, float(x) / (self.x_scale or 1.0)])

    def predict(self, x: float) -> float:
        """Predicted mean model latency (ms) at x kept token-layers."""
        line = float(self._theta @ self._phi(x))
        if not self.calibrated and self._proportional is not None:
            line = max(line, self._proportional * float(x))
        return max(0.0, line)

    @property
    def margin(self) -> float:
        """Tail margin (ms) added to the mean prediction; never negative."""
        if len(self._residuals) < self.min_residuals:  # too few for statistics: the floor or the worst seen
            return max(0.0, self._floor, self._residuals.max)
        return max(0.0, self._residuals.tail)

    def predict_tail(self, x: float) -> float:
        """Predicted tail (the `quantile`) of the model latency (ms) at x."""
        return self.predict(x) + self.margin

    def calibrate(self, samples: Iterable[tuple[float, float]]) -> None:
        """Initialise from (x, ms) pairs, e.g. a sweep over budgets at start-up; replaces any earlier state.

        Robust: one least-squares fit, then points further than 3.5 robust sigmas dropped and a refit. With no
        spread in x the slope is `slope_prior` and a the mean latency, and the model stays in warm-up (see the
        class notes) until later samples show the slope; a negative slope becomes 0.
        """
        data = np.asarray([(float(x), float(ms)) for x, ms in samples], dtype=float).reshape(-1, 2)
        data = data[np.all(np.isfinite(data), axis=1) & (data[:, 1] >= 0) & (data[:, 0] >= 0)]
        if len(data) == 0:
            raise ValueError("calibrate needs at least one finite (x, ms) sample with x >= 0 and ms >= 0")
        x, y = data[:, 0], data[:, 1]
        if self.x_scale is None:
            self.x_scale = float(np.max(x)) or 1.0
        theta, keep = self._robust_fit(x / self.x_scale, y)
        self._theta = theta
        xn = x[keep] / self.x_scale
        info = np.stack([np.ones(len(xn)), xn], axis=1)
        info = info.T @ info
        self._P = np.linalg.inv(info) if np.linalg.cond(info) < 1e8 else np.diag([1.0 / len(xn), 1.0])
        self._cap_covariance()
        self._residuals.clear()
        for r in (y - (theta[0] + theta[1] * x / self.x_scale))[keep][-self.window:]:
            self._residuals.update(r)
        self._floor = self.initial_margin_frac * float(np.mean(y))
        self._settle, self._pending_fast = 0, None
        self.n_obs = int(len(y))
        self.calibrated = self._has_spread(x[keep])
        self._warmup.clear()
        self._proportional = None
        if not self.calibrated:
            self._warmup.extend(zip(x.tolist(), y.tolist(), strict=True))
            self._refresh_proportional()

    @staticmethod
    def _has_spread(x: np.ndarray) -> bool:
        return len(x) >= 2 and float(np.min(x)) >= 0 and float(np.max(x)) >= 1.2 * float(np.min(x)) > 0

    def _robust_fit(self, xn: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.ones(len(y), dtype=bool)
        theta = self._batch_fit(xn, y)
        for _ in range(3):
            residual = y - (theta[0] + theta[1] * xn)
            centre = float(np.median(residual[keep]))
            mad = float(np.median(np.abs(residual[keep] - centre)))
            if mad <= 0:
                break
            new_keep = np.abs(residual - centre) <= 3.5 * 1.4826 * mad
            if new_keep.sum() < 2 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
            theta = self._batch_fit(xn[keep], y[keep])
        return theta, keep

    def _batch_fit(self, xn: np.ndarray, y: np.ndarray) -> np.ndarray:
        prior_bn = self.slope_prior * (self.x_scale or 1.0)
        if len(y) < 2 or float(np.std(xn)) <= 1e-9 * max(1.0, float(np.mean(np.abs(xn)))):
            return np.array([float(np.mean(y)) - prior_bn * float(np.mean(xn)), prior_bn])
        bn, a = np.polyfit(xn, y, 1)
        if bn < 0:
            return np.array([float(np.mean(y)), 0.0])
        return np.array([float(a), float(bn)])

    def _refresh_proportional(self) -> None:
        recent = [(x, ms) for x, ms in list(self._warmup)[-3:] if x > 0]
        self._proportional = float(np.median([ms / x for x, ms in recent])) if recent else None

    def update(self, x: float, ms: float) -> float | None:
        """Add one frame's measurement. Returns its one-step-ahead residual (observed - predicted) when it was
        taken as noise into the residual window; None when it was not (invalid input, warm-up, a detected or
        pending regime change, a frame settling after one)."""
        x, ms = float(x), float(ms)
        if not (math.isfinite(x) and math.isfinite(ms)) or ms < 0 or x < 0:
            return None
        if self.x_scale is None:
            self.x_scale = x if x > 0 else 1.0
        if not self.calibrated:
            self._warmup_update(x, ms)
            return None
        phi = self._phi(x)
        predicted = float(self._theta @ phi)
        residual = ms - predicted
        self.n_obs += 1
        if len(self._residuals) >= self.min_residuals and predicted > 0:
            threshold = max(self.change_sigmas * self._residuals.std, self.change_rel * predicted)
            if residual > threshold:
                self._regime_change(ms / predicted)
                return None
            if residual < -threshold:
                if self._pending_fast is None:  # one fast frame is not yet a change: wait for a second
                    self._pending_fast = ms / predicted
                    return None
                self._regime_change(0.5 * (self._pending_fast + ms / predicted))
                return None
        self._pending_fast = None
        self._rls(phi, residual)
        if self._settle > 0:
            self._settle -= 1
            return None
        self._residuals.update(residual)
        return residual

    def _warmup_update(self, x: float, ms: float) -> None:
        if self._warmup:
            self._residuals.update(ms - self.predict(x))
        self._warmup.append((x, ms))
        self.n_obs += 1
        data = np.asarray(self._warmup)
        if len(data) >= self.min_residuals and self._has_spread(data[:, 0]):
            self.calibrate(data.tolist())
            return
        self._theta = self._batch_fit(data[:, 0] / (self.x_scale or 1.0), data[:, 1])
        self._refresh_proportional()
        self._floor = self.initial_margin_frac * float(np.mean(data[-3:, 1]))

    def _rls(self, phi: np.ndarray, residual: float) -> None:
        lam = self.forgetting
        p_phi = self._P @ phi
        gain = p_phi / (lam + float(phi @ p_phi))
        self._theta = self._theta + gain * residual
        self._P = (self._P - np.outer(gain, p_phi)) / lam
        self._P = 0.5 * (self._P + self._P.T)
        self._cap_covariance()
        if self._theta[1] < 0:  # project onto b >= 0, keeping the prediction at this x
            self._theta = np.array([self._theta[0] + self._theta[1] * phi[1], 0.0])

    def _cap_covariance(self) -> None:
        trace = float(np.trace(self._P))
        if trace > self._p_max:
            self._P *= self._p_max / trace

    def _regime_change(self, ratio: float) -> None:
        ratio = min(max(ratio, 0.2), 5.0)
        self._floor = self.margin * ratio
        self._theta = self._theta * ratio
        self._P = self._P + 0.5 * np.eye(2)
        self._cap_covariance()
        self._residuals.clear()
        self._settle, self._pending_fast = 2, None
        self.changes += 1


@dataclass(frozen=True)
class Choice:
    """One frame's decision."""

    budget: int  # visual tokens per decoder layer (on average) for this frame, in [min_tokens, max_tokens]
    predicted_ms: float  # predicted tail frame latency at `budget` (pre + model + post), NaN while warming up
    feasible: bool  # False when not even min_tokens' predicted tail fits: budget is then min_tokens
    reason: str
    max_feasible: int | None = None  # largest budget whose predicted tail fits (None while warming up/infeasible)
    base_budget: int | None = None  # the hysteresis-held budget before complexity scaling
    available_ms: float = math.nan  # time left for the model's mean latency (see LatencyGovernor.available_ms)


@dataclass(frozen=True)
class GovernorDiagnostics:
    """What the node puts on /diagnostics: a DiagnosticStatus level, a message and key/value pairs."""

    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


class LatencyGovernor:
    """Chooses each frame's token budget so that the predicted tail latency fits the latency budget.

    `tokens_to_x` maps a budget T to kept token-layers x (an int L means x = T * L); it must not decrease with T.
    `target_tokens` is the budget wanted when time allows (default `max_tokens`; in complexity-aware mode the
    mean budget wanted); the budget always stays within [`min_tokens`, `max_tokens`].

    Hysteresis: the budget drops at once to the largest fitting one when the current one no longer fits; it
    rises only when the largest fitting one is at least max(`hysteresis_tokens`, `hysteresis_frac` * current)
    above the current, and then by at most `max_step_up` * current per frame (a cautious ramp, since the cost
    model extrapolates when the budget moves).

    Complexity-aware mode (``complexity_aware=True``): ``choose(complexity)`` scales a base budget B by
    f = clamp(1 + gain * z, 1 - spread, 1 + spread) / mean_f, z being the complexity standardised over the last
    `complexity_window` frames and mean_f the mean of the same clamp over that window, so f averages 1 and the
    mean budget (hence, latency being linear in tokens, the mean latency) stays that of a fixed budget B. Hard
    frames get more tokens only where time allows: every frame is still clipped to the largest budget whose
    tail fits. For that clip to be rare, B leaves headroom: B = min(target, largest fitting / (1 + spread)).
    So when the deadline binds, the mode runs at a lower mean budget than the fixed mode's (the price of
    keeping the tail guarantee for hard frames); when the target binds (time to spare), it has the same mean
    budget. Higher complexity must mean "needs more tokens" (negate a measure that runs the other way).
    Measured (`latency_sim.compare_complexity_allocation`, a made-up quality proxy): it pays only when easy frames
    already saturate at the target budget, so it is off by default.
    """

    def __init__(self, latency_budget_ms: float, min_tokens: int, max_tokens: int,
                 tokens_to_x: Callable[[float], float] | int, *, target_tokens: int | None = None,
                 quantile: float = 0.999, forgetting: float = 0.95, window: int = 100, safety_margin_ms: float = 1.0,
                 hysteresis_tokens: int = 8, hysteresis_frac: float = 0.05, max_step_up: float = 0.25,
                 complexity_aware: bool = False, gain: float = 0.5, spread: float = 0.3,
                 complexity_window: int = 200, min_complexity_samples: int = 10, shift_threshold: float = 6.0,
                 cost_model: CostModel | None = None) -> None:
        if isinstance(tokens_to_x, numbers.Integral) and not isinstance(tokens_to_x, bool):
            num_layers = _int("num_layers", tokens_to_x, low=1)
            self.tokens_to_x: Callable[[float], float] = lambda t: float(t) * num_layers
        elif callable(tokens_to_x):
            self.tokens_to_x = tokens_to_x
        else:
            raise ValueError(f"tokens_to_x must be a callable or a number of layers, got {tokens_to_x!r}")
        self.latency_budget_ms = _real("latency_budget_ms", latency_budget_ms, low=0.0, low_open=True)
        self.min_tokens, self.max_tokens, self.target_tokens = self._check_limits(min_tokens, max_tokens,
                                                                                  target_tokens)
        self.safety_margin_ms = _real("safety_margin_ms", safety_margin_ms, low=0.0)
        self.hysteresis_tokens = _int("hysteresis_tokens", hysteresis_tokens, low=0)
        self.hysteresis_frac = _real("hysteresis_frac", hysteresis_frac, low=0.0, high=1.0)
        self.max_step_up = _real("max_step_up", max_step_up, low=0.0, low_open=True)
        self.complexity_aware = bool(complexity_aware)
        self.gain = _real("gain", gain, low=0.0)
        self.spread = _real("spread", spread, low=0.0, high=1.0, high_open=True)
        self.min_complexity_samples = _int("min_complexity_samples", min_complexity_samples, low=2)
        self._complexities: deque[float] = deque(maxlen=_int("complexity_window", complexity_window, low=2))
        self.cost = cost_model or CostModel(forgetting=forgetting, quantile=quantile, window=window,
                                            x_scale=self._x(self.max_tokens) or None)
        self.pre = TailEstimator(window, self.cost.quantile)
        self.post = TailEstimator(window, self.cost.quantile)
        # pre + post of the same frame; level shifts (load on the CPU side) are followed at once
        self.overhead = TailEstimator(window, self.cost.quantile, shift_threshold=shift_threshold)
        # frame latency - predicted mean model latency: model noise and pre/post together, so its tail is the
        # tail of their sum (adding the two tails separately would over-reserve)
        self.frame_residual = TailEstimator(window, self.cost.quantile, shift_threshold=shift_threshold)
        self._cost_changes_seen = self.cost.changes
        self._base: int | None = None
        self.last: Choice | None = None
        self.frames = self.misses = self.infeasible_frames = self.budget_changes = 0
        self.rejected = 0  # observations ignored as non-finite or negative
        self._lock = threading.RLock()  # setters may run on a parameter-callback thread

    # ---- configuration -------------------------------------------------------------------------------------
    @staticmethod
    def _check_limits(min_tokens: int, max_tokens: int, target_tokens: int | None) -> tuple[int, int, int]:
        lo = _int("min_tokens", min_tokens, low=1)
        hi = _int("max_tokens", max_tokens, low=1)
        if lo > hi:
            raise ValueError(f"min_tokens ({lo}) must be <= max_tokens ({hi})")
        target = hi if target_tokens is None else _int("target_tokens", target_tokens, low=1)
        if not lo <= target <= hi:
            raise ValueError(f"target_tokens ({target}) must lie in [min_tokens, max_tokens] = [{lo}, {hi}]")
        return lo, hi, target

    def set_latency_budget(self, ms: float) -> None:
        """Change the per-frame latency budget (e.g. a new camera rate); takes effect at the next choose()."""
        value = _real("latency_budget_ms", ms, low=0.0, low_open=True)
        with self._lock:
            self.latency_budget_ms = value

    def set_limits(self, min_tokens: int, max_tokens: int, target_tokens: int | None = None) -> None:
        """Change the token limits at run time (validated before anything changes); `target_tokens` defaults to
        `max_tokens`."""
        limits = self._check_limits(min_tokens, max_tokens, target_tokens)
        with self._lock:
            self.min_tokens, self.max_tokens, self.target_tokens = limits

    def calibrate(self, samples: Iterable[tuple[float, float]]) -> None:
        """Initialise the cost model from (budget T, model ms) pairs, e.g. a start-up sweep."""
        samples = [(self._x(t), ms) for t, ms in samples]
        with self._lock:
            self.cost.calibrate(samples)

    # ---- per frame -----------------------------------------------------------------------------------------
    def _x(self, tokens: float) -> float:
        return float(self.tokens_to_x(tokens))

    @property
    def tail_extra_ms(self) -> float:
        """Tail of (frame latency - predicted mean model latency): model noise + pre + post.

        Measured directly once `min_residuals` frames have been seen since the cost model's last regime change;
        until then the sum of the model's margin and the pre/post tail (conservative)."""
        if len(self.frame_residual) >= self.cost.min_residuals:
            return max(0.0, self.frame_residual.tail)
        return self.cost.margin + self.overhead.tail

    @property
    def available_ms(self) -> float:
        """Time left for the model's predicted mean latency: latency budget - safety margin - tail_extra_ms."""
        return self.latency_budget_ms - self.safety_margin_ms - self.tail_extra_ms

    def _largest_fitting(self, available: float) -> int | None:
        """Largest T in [min, max] whose predicted mean model latency fits `available` (x(T) non-decreasing)."""
        if self.cost.predict(self._x(self.min_tokens)) > available:
            return None
        lo, hi = self.min_tokens, self.max_tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.cost.predict(self._x(mid)) <= available:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _complexity_factor(self, complexity: float | None) -> float:
        if complexity is None or not math.isfinite(complexity):
            return 1.0
        history = np.fromiter(self._complexities, dtype=float)
        self._complexities.append(float(complexity))
        if len(history) < self.min_complexity_samples:
            return 1.0
        mean, std = float(history.mean()), float(history.std())
        if std <= 1e-12 * max(1.0, abs(mean)):
            return 1.0
        lo, hi = 1.0 - self.spread, 1.0 + self.spread
        mean_f = float(np.clip(1.0 + self.gain * (history - mean) / std, lo, hi).mean())
        return float(np.clip(1.0 + self.gain * (complexity - mean) / std, lo, hi)) / mean_f

    def _tail_total(self, tokens: int) -> float:
        return self.cost.predict(self._x(tokens)) + self.tail_extra_ms

    def choose(self, complexity: float | None = None) -> Choice:
        """Pick this frame's budget. `complexity`: this frame's (or, if only known after prefill, the previous
        frame's) complexity; used in complexity-aware mode only."""
        with self._lock:
            return self._choose(complexity)

    def _choose(self, complexity: float | None) -> Choice:
        factor = self._complexity_factor(complexity) if self.complexity_aware else 1.0
        available = self.available_ms
        if not self.cost.ready or len(self.overhead) == 0:
            choice = Choice(self.min_tokens, math.nan, True, "warm-up: no frame measured yet, using min_tokens",
                            None, self.min_tokens, available)
            return self._emit(choice)
        fitting = self._largest_fitting(available)
        if fitting is None:
            self._base = self.min_tokens
            predicted = self._tail_total(self.min_tokens)
            reason = (f"infeasible: even min_tokens={self.min_tokens} has predicted p{self._pct} frame latency "
                      f"{predicted:.1f} ms > latency budget {self.latency_budget_ms:.1f} ms - safety "
                      f"{self.safety_margin_ms:.1f} ms (model {self.cost.predict(self._x(self.min_tokens)):.1f} + "
                      f"noise/pre/post tail {self.tail_extra_ms:.1f}); holding min_tokens, deadline misses expected")
            self.infeasible_frames += 1
            return self._emit(Choice(self.min_tokens, predicted, False, reason, None, self.min_tokens, available))
        headroom = 1.0 + self.spread if self.complexity_aware else 1.0
        want = max(self.min_tokens, min(self.target_tokens, int(fitting / headroom)))
        base, reason = self._hysteresis(want)
        budget = base
        if self.complexity_aware and factor != 1.0:
            budget = int(min(max(round(base * factor), self.min_tokens), fitting))
            reason += f"; complexity x{factor:.2f}"
        choice = Choice(budget, self._tail_total(budget), True, reason, fitting, base, available)
        return self._emit(choice)

    def _hysteresis(self, want: int) -> tuple[int, str]:
        current = self._base
        if current is None:
            if self.cost.calibrated:  # the slope was measured: trust the model from the start
                self._base = want
                return want, "start"
            current = self.min_tokens  # uncalibrated: ramp up from the minimum
        current = max(current, self.min_tokens)  # min_tokens may have been raised since
        if current > want:
            self._base = want
            return want, f"down {current}->{want}: current budget no longer fits"
        step = max(self.hysteresis_tokens, math.ceil(self.hysteresis_frac * current), 1)
        if want >= current + step:
            new = min(want, max(current + step, int(current * (1.0 + self.max_step_up))))
            self._base = new
            return new, f"up {current}->{new} (largest fitting {want})"
        return current, "held" if want == current else f"held (largest fitting {want} within hysteresis)"

    def _emit(self, choice: Choice) -> Choice:
        if self.last is not None and choice.budget != self.last.budget:
            self.budget_changes += 1
        self.last = choice
        return choice

    @property
    def _pct(self) -> str:
        return f"{100 * self.cost.quantile:g}"

    def observe(self, budget: float, model_ms: float, pre_ms: float, post_ms: float, x: float | None = None) -> None:
        """Feed back one frame's measured times. `x`: the kept token-layers actually run, when the caller knows
        them (e.g. the sum of the pruner's per-layer visual-token counts); default tokens_to_x(budget)."""
        with self._lock:
            self._observe(budget, model_ms, pre_ms, post_ms, x)

    def _observe(self, budget: float, model_ms: float, pre_ms: float, post_ms: float, x: float | None) -> None:
        values = (model_ms, pre_ms, post_ms)
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0 for v in values):
            self.rejected += 1
            return
        x = self._x(budget) if x is None else float(x)
        residual = self.cost.update(x, model_ms)
        if self.cost.changes != self._cost_changes_seen:  # new regime: old frame residuals describe the old one
            self._cost_changes_seen = self.cost.changes
            self.frame_residual.clear()
        elif residual is not None:
            self.frame_residual.update(residual + pre_ms + post_ms)
        self.pre.update(pre_ms)
        self.post.update(post_ms)
        self.overhead.update(pre_ms + post_ms)
        self.frames += 1
        if model_ms + pre_ms + post_ms > self.latency_budget_ms:
            self.misses += 1

    def diagnostics(self) -> GovernorDiagnostics:
        """Health for /diagnostics: WARN while the minimum budget does not fit."""
        with self._lock:
            return self._diagnostics()

    def _diagnostics(self) -> GovernorDiagnostics:
        last = self.last
        if last is None:
            level, message = DIAG_OK, "no frame yet"
        elif not last.feasible:
            level, message = DIAG_WARN, last.reason
        else:
            level, message = DIAG_OK, f"budget {last.budget} tokens: {last.reason}"
        values = {
            "latency_budget_ms": f"{self.latency_budget_ms:.1f}",
            "budget_tokens": "" if last is None else str(last.budget),
            "feasible": "" if last is None else str(last.feasible),
            "predicted_tail_ms": "" if last is None else f"{last.predicted_ms:.2f}",
            "min_tokens": str(self.min_tokens),
            "max_tokens": str(self.max_tokens),
            "target_tokens": str(self.target_tokens),
            "cost_a_ms": f"{self.cost.a:.3f}",
            "cost_b_ms_per_token_layer": f"{self.cost.b:.6g}",
            "model_margin_ms": f"{self.cost.margin:.2f}",
            "pre_mean_ms": f"{self.pre.mean:.2f}",
            "post_mean_ms": f"{self.post.mean:.2f}",
            "pre_post_tail_ms": f"{self.overhead.tail:.2f}",
            "noise_pre_post_tail_ms": f"{self.tail_extra_ms:.2f}",
            "frames": str(self.frames),
            "deadline_misses": str(self.misses),
            "infeasible_frames": str(self.infeasible_frames),
            "budget_changes": str(self.budget_changes),
            "cost_changes_detected": str(self.cost.changes),
            "complexity_aware": str(self.complexity_aware),
        }
        return GovernorDiagnostics(level, message, values)
