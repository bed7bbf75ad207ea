"""The tiny LLaVA driving policy built from config/models/tiny_llava.yaml, its tokenizer, head and controller."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune_ros.vla import (
    Action,
    PolicyOutput,
    VLAPolicy,
    WaypointController,
    build_tiny_vla,
    build_tokenizer,
    load_model_config,
    load_vla,
    save_vla,
    validate_model_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "models" / "tiny_llava.yaml"
TOKENS_PER_IMAGE = 196  # (224 / 16)^2 patches; CLS dropped by the 'default' feature-select strategy


def _frame(seed: int = 0, height: int = 480, width: int = 640) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _tokenizer_digest(vocab_size: int = 512) -> str:
    return hashlib.sha256(build_tokenizer(vocab_size).backend_tokenizer.to_str().encode()).hexdigest()


@pytest.fixture(scope="module")
def config() -> dict:
    return load_model_config(CONFIG)


@pytest.fixture(scope="module")
def policy(config: dict) -> VLAPolicy:
    return build_tiny_vla(config)


@pytest.fixture()
def fresh_policy(policy: VLAPolicy) -> VLAPolicy:
    policy.reset()
    return policy


# --- tokenizer and processor -----------------------------------------------------------------------------------


def test_tokenizer_is_identical_across_builds_and_processes() -> None:
    digest = _tokenizer_digest()
    assert _tokenizer_digest() == digest
    code = (
        "import hashlib; from autoprune_ros.vla.tokenizer import build_tokenizer; "
        "print(hashlib.sha256(build_tokenizer(512).backend_tokenizer.to_str().encode()).hexdigest())"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == digest


def test_tokenizer_special_tokens() -> None:
    tok = build_tokenizer(512)
    assert len(tok) <= 512
    ids = tok("USER: <image><image>\nfollow the lane").input_ids
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids(tok.image_token)) == 2
    assert tok.decode(tok("turn left at 3.5 m/s", add_special_tokens=False).input_ids) == "turn left at 3.5 m/s"
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(100)


def test_model_vocab_matches_tokenizer(policy: VLAPolicy) -> None:
    assert policy.model.config.text_config.vocab_size == len(policy.processor.tokenizer)
    assert policy.model.config._attn_implementation == "sdpa"
    assert not policy.model.training


@pytest.mark.parametrize("views", [1, 2])
def test_processor_expands_196_image_tokens_per_view(policy: VLAPolicy, views: int) -> None:
    inputs = policy.prepare_inputs([_frame(i) for i in range(views)], "follow the lane", 3.0)
    assert int((inputs["input_ids"] == policy.model.config.image_token_id).sum()) == views * TOKENS_PER_IMAGE
    assert tuple(inputs["pixel_values"].shape) == (views, 3, 224, 224)
    assert policy.visual_tokens_per_image == TOKENS_PER_IMAGE


def test_instruction_cannot_inject_image_tokens(fresh_policy: VLAPolicy) -> None:
    assert "<image>" not in fresh_policy.clean_instruction("turn <image> left\n<s>now")
    out = fresh_policy.act([_frame()], "turn <image> left", 2.0)
    assert out.num_visual_tokens == TOKENS_PER_IMAGE


# --- acting -------------------------------------------------------------------------------------------------------


def _assert_valid(out: PolicyOutput, num_waypoints: int) -> None:
    action = out.action
    assert action.is_finite()
    assert -1.0 <= action.steer <= 1.0
    assert 0.0 <= action.throttle <= 1.0 and 0.0 <= action.brake <= 1.0
    assert not (action.throttle > 0.0 and action.brake > 0.0)
    assert action.target_speed >= 0.0
    assert action.waypoints.shape == (num_waypoints, 2) and action.waypoints.dtype == np.float32
    assert set(out.timings_ms) == {"preprocess", "model", "head_and_control"}
    assert all(v >= 0.0 for v in out.timings_ms.values())


def test_act_returns_finite_action_in_range(fresh_policy: VLAPolicy, config: dict) -> None:
    out = fresh_policy.act([_frame()], "follow the lane", 5.0)
    _assert_valid(out, config["action_head"]["num_waypoints"])
    assert out.num_visual_tokens == TOKENS_PER_IMAGE
    assert (np.diff(out.action.waypoints[:, 0]) > 0).all()  # the untrained head still drives forward
    assert out.action.target_speed <= config["action_head"]["max_speed"]


def test_two_views_count_392_visual_tokens(fresh_policy: VLAPolicy, config: dict) -> None:
    out = fresh_policy.act([_frame(0), _frame(1, 240, 320)], "turn right at the next intersection", 8.0)
    _assert_valid(out, config["action_head"]["num_waypoints"])
    assert out.num_visual_tokens == 2 * TOKENS_PER_IMAGE


def test_instruction_changes_the_output(fresh_policy: VLAPolicy) -> None:
    frame = [_frame()]
    with torch.inference_mode():
        left = fresh_policy._encode(frame, "turn left at the next intersection", 5.0)[0]
        stop = fresh_policy._encode(frame, "stop", 5.0)[0]
    assert left.shape == (fresh_policy.model.config.text_config.hidden_size,)
    assert not torch.allclose(left, stop)
    fresh_policy.reset()
    a = fresh_policy.act(frame, "turn left at the next intersection", 5.0).action
    fresh_policy.reset()
    b = fresh_policy.act(frame, "stop", 5.0).action
    assert not np.array_equal(a.waypoints, b.waypoints)


def test_a_template_with_the_yaw_rate_reads_it(config: dict) -> None:
    cfg = {**config, "prompt": {**config["prompt"], "template": config["prompt"]["template"].replace(
        "Speed:", "Yaw rate: {yaw_rate:+.0f} deg/s. Speed:")}}
    turning, plain = build_tiny_vla(cfg, seed=1), build_tiny_vla(config, seed=1)
    assert "Yaw rate: -29 deg/s. Speed: 5.0 m/s" in turning.build_prompt(1, "go", 5.0, -0.5)
    assert plain.build_prompt(1, "go", 5.0, -0.5) == plain.build_prompt(1, "go", 5.0)  # no field: not read
    frame = [_frame()]
    straight, left = (turning.act(frame, "go", 5.0, yaw_rate_rps=w).action.waypoints for w in (0.0, 0.6))
    assert not np.array_equal(straight, left)
    with pytest.raises(ValueError, match="yaw_rate_rps must be a finite number"):
        turning.act(frame, "go", 5.0, yaw_rate_rps=math.nan)
    with pytest.raises(ValueError, match="images, instruction, speed, yaw_rate"):
        VLAPolicy.check_prompt_template("{images} {instruction} {heading}")


def test_same_seed_same_action_different_seed_different_weights(config: dict) -> None:
    rng_before = torch.random.get_rng_state()
    first, again, other = build_tiny_vla(config, seed=7), build_tiny_vla(config, seed=7), build_tiny_vla(config, seed=8)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # building leaves the global RNG alone
    state, state_again, state_other = (p.model.state_dict() for p in (first, again, other))
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert any(not torch.equal(state[k], state_other[k]) for k in state)
    frame = [_frame(3)]
    assert first.act(frame, "slow down", 4.0).action == again.act(frame, "slow down", 4.0).action


def test_warmup_leaves_controller_reset(fresh_policy: VLAPolicy) -> None:
    fresh_policy.warmup(n=1)
    assert fresh_policy.controller._integral == 0.0


def test_save_and_load_round_trip(policy: VLAPolicy, tmp_path: Path) -> None:
    save_vla(policy, tmp_path)
    weights = sorted(p.name for p in tmp_path.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".pkl"})
    assert weights == ["action_head.safetensors", "model.safetensors"]
    loaded = load_vla(tmp_path)
    frame = [_frame(5)]
    policy.reset()
    expected = policy.act(frame, "change lanes to the left", 6.0).action
    assert loaded.act(frame, "change lanes to the left", 6.0).action == expected
    assert loaded.config == policy.config


def test_load_rejects_a_directory_without_a_saved_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a saved VLA"):
        load_vla(tmp_path)


BAD_INPUTS = [
    (lambda f: f, 3.0, 0.1, "single array"),
    (lambda f: [], 3.0, 0.1, "non-empty sequence"),
    (lambda f: [f[..., 0]], 3.0, 0.1, r"images\[0\] must have shape HxWx3"),
    (lambda f: [np.dstack([f, f[..., :1]])], 3.0, 0.1, r"images\[0\] must have shape HxWx3"),
    (lambda f: [f.astype(np.float32)], 3.0, 0.1, r"images\[0\] must have dtype uint8"),
    (lambda f: [f, "not an image"], 3.0, 0.1, r"images\[1\] must be a numpy.ndarray"),
    (lambda f: [f[:0]], 3.0, 0.1, r"images\[0\] is empty"),
    (lambda f: [f], math.nan, 0.1, "speed_mps must be a finite number"),
    (lambda f: [f], math.inf, 0.1, "speed_mps must be a finite number"),
    (lambda f: [f], 3.0, 0.0, "dt must be > 0"),
]


@pytest.mark.parametrize(("make_images", "speed", "dt", "message"), BAD_INPUTS)
def test_bad_inputs_raise_helpful_value_errors(policy: VLAPolicy, make_images, speed, dt, message) -> None:
    with pytest.raises(ValueError, match=message):
        policy.act(make_images(_frame()), "follow the lane", speed, dt)


def test_instruction_must_be_text(policy: VLAPolicy) -> None:
    with pytest.raises(ValueError, match="instruction must be a str"):
        policy.act([_frame()], None, 3.0)  # type: ignore[arg-type]


def test_cpu_rejects_half_precision(policy: VLAPolicy) -> None:
    with pytest.raises(ValueError, match="only supported on cuda"):
        policy.to("cpu", torch.float16)


# --- config validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("text", "hidden_size", "big", "'text.hidden_size' must be of type int"),
        ("text", "num_key_value_heads", 3, "'text.num_attention_heads' .* multiple of 'text.num_key_value_heads'"),
        ("vision", "patch_size", 15, "'vision.image_size' .* multiple of 'vision.patch_size'"),
        ("vision", "feature_select_strategy", "cls", "'vision.feature_select_strategy' must be one of"),
        ("vision", "feature_layer", 9, "'vision.feature_layer'"),
        ("text", "hidden_sise", 256, "unknown key 'text.hidden_sise'"),
        ("controller", "wheelbase", -1.0, "controller.*wheelbase must be > 0"),
        ("action_head", "num_waypoints", 0, "'action_head.num_waypoints' must be > 0"),
        ("prompt", "template", "USER: {images}", "must contain {instruction}"),
        ("pruning", "compact_positions", 1, "'pruning.compact_positions' must be of type bool"),
    ],
)
def test_config_validation_names_the_bad_key(config: dict, section: str, key: str, value, message: str) -> None:
    broken = {**config, section: {**config[section], key: value}}
    with pytest.raises(ValueError, match=message):
        validate_model_config(broken)


def test_pruning_positions_default_to_compact_and_accept_a_bool(config: dict) -> None:
    without = {k: v for k, v in config.items() if k != "pruning"}
    assert validate_model_config(without)["pruning"]["compact_positions"] is True
    assert validate_model_config({**config, "pruning": {"compact_positions": False}})["pruning"] == {
        "compact_positions": False}


def test_config_missing_key_is_named(config: dict) -> None:
    text = {k: v for k, v in config["text"].items() if k != "num_hidden_layers"}
    with pytest.raises(ValueError, match=r"missing required key 'text\.num_hidden_layers'"):
        validate_model_config({**config, "text": text})


# --- controller and action ----------------------------------------------------------------------------------------


def _line(lateral_per_metre: float) -> np.ndarray:
    x = np.arange(1, 9, dtype=np.float32) * 2.0
    return np.stack([x, lateral_per_metre * x**2 / 10.0], axis=1)


def test_controller_steering_follows_the_waypoints() -> None:
    controller = WaypointController()
    assert controller.command(_line(0.0), 5.0, 5.0, 0.1)[0] == pytest.approx(0.0, abs=1e-9)
    assert controller.command(_line(0.5), 5.0, 5.0, 0.1)[0] > 0.0  # left is positive (REP 103)
    assert controller.command(_line(-0.5), 5.0, 5.0, 0.1)[0] < 0.0
    assert controller.command(np.zeros((8, 2)), 5.0, 5.0, 0.1)[0] == 0.0


def test_controller_speed_loop() -> None:
    controller = WaypointController()
    _, throttle, brake = controller.command(_line(0.0), 10.0, 5.0, 0.1)
    assert throttle > 0.0 and brake == 0.0
    controller.reset()
    _, throttle, brake = controller.command(_line(0.0), 2.0, 8.0, 0.1)
    assert brake > 0.0 and throttle == 0.0
    controller.reset()
    _, throttle, brake = controller.command(_line(0.0), 0.0, 0.0, 0.1)
    assert throttle == 0.0 and brake == controller.standstill_brake


def test_controller_rejects_non_finite_inputs_without_changing_state() -> None:
    controller = WaypointController()
    with pytest.raises(ValueError, match="waypoints must be finite"):
        controller.command(np.full((8, 2), np.nan), 5.0, 5.0, 0.1)
    assert controller._integral == 0.0


finite = st.floats(-50.0, 50.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(finite, finite), min_size=0, max_size=10),
    target=st.floats(0.0, 40.0),
    speed=st.floats(-5.0, 40.0),
    dt=st.floats(0.01, 1.0),
)
def test_controller_outputs_stay_in_range(points, target, speed, dt) -> None:
    controller = WaypointController()
    waypoints = np.array(points, dtype=np.float64).reshape(-1, 2)
    for _ in range(3):
        steer, throttle, brake = controller.command(waypoints, target, speed, dt)
        assert -1.0 <= steer <= 1.0 and 0.0 <= throttle <= 1.0 and 0.0 <= brake <= 1.0
        assert throttle == 0.0 or brake == 0.0


def test_action_safe_stop_and_clipping() -> None:
    stop = Action.safe_stop()
    assert (stop.steer, stop.throttle, stop.brake, stop.target_speed) == (0.0, 0.0, 1.0, 0.0)
    assert stop.waypoints.shape == (0, 2) and stop.is_finite()
    assert Action.safe_stop(steer=0.3, num_waypoints=8).waypoints.shape == (8, 2)
    assert Action.safe_stop(steer=math.nan).steer == 0.0
    wild = Action(steer=3.0, throttle=2.0, brake=-1.0, target_speed=-4.0, waypoints=np.ones((4, 2)))
    clipped = wild.clipped()
    assert (clipped.steer, clipped.throttle, clipped.brake, clipped.target_speed) == (1.0, 1.0, 0.0, 0.0)
    assert not Action(steer=math.nan, throttle=0.0, brake=0.0).is_finite()
    assert not Action(0.0, 0.0, 0.0, 0.0, np.array([[0.0, np.inf]])).is_finite()
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        Action(0.0, 0.0, 0.0, 0.0, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="read-only"):  # a frozen Action cannot be changed through its array
        Action.safe_stop(num_waypoints=2).waypoints[0] = 1.0


def test_action_module_imports_without_transformers() -> None:
    code = "import sys, autoprune_ros.vla.action, autoprune_ros.vla.controller; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_act_with_pruning_reports_the_prefill(policy: VLAPolicy) -> None:
    """The node prunes through act(): the kept counts follow the budget and the model still acts."""
    from autoprune_ros.pruning import AutoPrune
    from autoprune_ros.pruning.schedule import plan_token_counts

    frame = np.random.default_rng(3).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    full = policy.act([frame], "follow the lane", 3.0)
    pruned = policy.act([frame], "follow the lane", 3.0, pruning=AutoPrune(budget=22))
    assert full.prefill.visual_tokens_per_layer == [196] * len(full.prefill.seq_lens)
    stats = pruned.prefill
    assert stats.visual_tokens_per_layer == plan_token_counts(len(stats.seq_lens), 196, 22, stats.slope)
    assert stats.flops < full.prefill.flops and pruned.action.is_finite()
