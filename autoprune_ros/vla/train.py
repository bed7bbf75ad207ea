"""`autoprune-train`: train the tiny LLaVA driving VLA on recorded expert episodes (CPU, seeded, safetensors out).

    autoprune-train --data data/expert --output models/tiny_drive --epochs 10 --seed 0

Recipe, measured speed and determinism: docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers are imported in main(), so that --help stays fast
    import numpy as np
    import torch

    from .policy import VLAPolicy

TRAINING_FILE = "training.json"


@dataclass
class TokenDropout:
    """Visual-token dropout in training (`augment.drop_visual_tokens`): the share of samples it hits, the least
    fraction of visual tokens such a sample keeps, and the generator that draws both."""

    probability: float
    keep_min: float
    generator: Any


def encode_batch(policy: VLAPolicy, images: Sequence[np.ndarray], instructions: Sequence[str],
                 speeds: Sequence[float], yaw_rates: Sequence[float] | None = None,
                 dropout: TokenDropout | None = None) -> torch.Tensor:
    """Batched `policy._encode` (one camera view per sample, no pruning): the final-norm decoder hidden state of
    each sample's last non-pad prompt token, shape (B, hidden). Prompts are padded by the processor; the index of
    the last attended position is taken from the attention mask, so left or right padding both work. With
    `dropout`, some samples see only part of their visual tokens."""
    import torch

    from .augment import drop_visual_tokens

    if yaw_rates is None:
        yaw_rates = [0.0] * len(speeds)
    prompts = [policy.build_prompt(1, policy.clean_instruction(text), float(speed), float(yaw_rate))
               for text, speed, yaw_rate in zip(instructions, speeds, yaw_rates, strict=True)]
    inputs = policy.processor(images=list(images), text=prompts, return_tensors="pt", padding=True,
                              input_data_format="channels_last")
    inputs = inputs.to(policy.device)
    mask = inputs["attention_mask"]
    if dropout is not None:
        mask = drop_visual_tokens(inputs["input_ids"], mask, policy.model.config.image_token_id, dropout.probability,
                                  dropout.keep_min, dropout.generator)
    outputs = policy.model.model(input_ids=inputs["input_ids"], attention_mask=mask,
                                 pixel_values=inputs["pixel_values"].to(policy.dtype), use_cache=False)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * positions).argmax(dim=1)
    return outputs.last_hidden_state[torch.arange(mask.shape[0], device=mask.device), last]


@dataclass
class Objective:
    """What the loss weighs: the target-speed term, the lateral (y) waypoint error against the longitudinal one,
    and the training-only vision probe (`vision_probe.py`; `probe` and `tap` are None when `aux_weight` is 0);
    and what the policy sees: `dropout` of visual tokens, `pruned` samples (`pruning_aware.py`), or None, and
    routes withheld from `route_dropout` of the samples while training."""

    speed_weight: float = 1.0
    lateral_weight: float = 1.0
    aux_weight: float = 0.0
    probe: Any = None
    tap: Any = None
    dropout: TokenDropout | None = None
    pruned: Any = None  # pruning_aware.PrunedSamples, or None
    route_dropout: float = 0.0  # share of training samples whose route is withheld (models with a route input)
    route_generator: Any = None  # torch.Generator drawing them


def action_loss(pred_waypoints: torch.Tensor, pred_speed: torch.Tensor, waypoints: torch.Tensor,
                target_speeds: torch.Tensor, objective: Objective) -> torch.Tensor:
    """(L1(x) + lateral_weight * L1(y)) / 2 over the waypoints + speed_weight * L1(target speed); with a lateral
    weight of 1 the first term is the plain L1 over all waypoint coordinates."""
    error = (pred_waypoints - waypoints).abs()
    waypoint_term = (error[..., 0].mean() + objective.lateral_weight * error[..., 1].mean()) / 2
    return waypoint_term + objective.speed_weight * (pred_speed - target_speeds).abs().mean()


def _probe_loss(objective: Objective, waypoints: torch.Tensor, target_speeds: torch.Tensor) -> torch.Tensor:
    """The vision probe's action loss on the visual tokens the tap caught in the last forward pass."""
    probe_out = objective.probe(objective.tap.features.float())
    return action_loss(probe_out[:, :-1].reshape(waypoints.shape), probe_out[:, -1], waypoints, target_speeds,
                       objective)


def _encode_mixed(policy: VLAPolicy, batch: tuple, objective: Objective) -> torch.Tensor:
    """`encode_batch` for the unpruned samples and `pruning_aware.encode_pruned` one by one for those
    `objective.pruned` draws, in batch order; the tap, if any, is left holding every sample's visual tokens."""
    import torch

    from .pruning_aware import encode_pruned

    images, instructions, speeds, yaw_rates = batch[:4]
    plans = ([None] * len(images) if objective.pruned is None else
             objective.pruned.draw(len(images), policy.model.config.text_config.num_hidden_layers,
                                   policy.visual_tokens_per_image))
    plain = [i for i, plan in enumerate(plans) if plan is None]
    if len(plain) == len(images):
        return encode_batch(policy, images, instructions, speeds, yaw_rates, objective.dropout)
    hidden: list[Any] = [None] * len(images)
    features: list[Any] = [None] * len(images)
    if plain:
        out = encode_batch(policy, *([column[i] for i in plain] for column in (images, instructions, speeds,
                                                                               yaw_rates)), objective.dropout)
        for row, i in enumerate(plain):
            hidden[i] = out[row]
            features[i] = None if objective.tap is None else objective.tap.features[row]
    for i, plan in enumerate(plans):
        if plan is not None:
            hidden[i] = encode_pruned(policy, images[i], instructions[i], speeds[i], yaw_rates[i], plan)
            features[i] = None if objective.tap is None else objective.tap.features[0]
    if objective.tap is not None:
        objective.tap.features = torch.stack(features)
    return torch.stack(hidden)


def withhold_routes(policy: VLAPolicy, routes: torch.Tensor, lines: torch.Tensor,
                    objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's route points (B, P, 2) and route lines (B, M, 2) with, while the head trains,
    `objective.route_dropout` of the samples losing both (NaN), so that the model learns to drive from the camera
    when no route is published."""
    import torch

    if not (policy.uses_route and objective.route_dropout > 0 and policy.head.training):
        return routes, lines
    withheld = torch.rand(len(routes), generator=objective.route_generator) < objective.route_dropout
    routes, lines = routes.clone(), lines.clone()
    routes[withheld] = float("nan")
    lines[withheld] = float("nan")
    return routes, lines


def route_batch(policy: VLAPolicy, routes: torch.Tensor) -> torch.Tensor | None:
    """The head's route features (B, F) for route points (B, P, 2), NaN where a sample has none; None for a model
    without a route input."""
    import torch

    from .route import route_features

    if not policy.uses_route:
        return None
    if routes.shape[1] != policy.route_points and torch.isnan(routes).all():  # collate cannot size a batch of none
        routes = routes.new_full((len(routes), policy.route_points, 2), float("nan"))
    return torch.from_numpy(route_features(routes.numpy(), policy.route_lookahead_m, policy.route_points)
                            ).to(policy.device)


def predict(policy: VLAPolicy, hidden: torch.Tensor, batch: tuple,
            objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's ego-frame waypoints (B, N, 2) and target speeds (B,) for the batch's hidden states, with its
    routes (some withheld while training) and, for a route-frame head, laid along their route lines."""
    from .route_frame import along_route

    routes, lines = withhold_routes(policy, *batch[6:8], objective)
    waypoints, speed = policy.head(hidden.float(), route_batch(policy, routes))
    if policy.waypoint_frame == "route":
        waypoints = along_route(waypoints, lines.to(policy.device) if lines.shape[1] >= 2 else None)
    return waypoints, speed


def batch_loss(policy: VLAPolicy, batch: tuple, objective: Objective) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the policy's action loss, the vision probe's loss on the same targets or None without a probe)."""
    waypoints, target_speeds = batch[4:6]
    pred_waypoints, pred_speed = predict(policy, _encode_mixed(policy, batch, objective), batch, objective)
    main = action_loss(pred_waypoints, pred_speed, waypoints, target_speeds, objective)
    if objective.probe is None:
        return main, None
    return main, _probe_loss(objective, waypoints, target_speeds)


def vision_loss(policy: VLAPolicy, batch: tuple, objective: Objective) -> torch.Tensor:
    """The vision probe's action loss on a batch with the vision tower and projector alone: the decoder is not run,
    which makes a step about four times cheaper than `batch_loss` (docs/training.md, "Vision pre-training")."""
    images, (waypoints, target_speeds) = batch[0], batch[4:6]
    config = policy.model.config
    pixels = policy.processor.image_processor(images=list(images), return_tensors="pt",
                                              input_data_format="channels_last")["pixel_values"]
    policy.model.model.get_image_features(pixel_values=pixels.to(policy.device, policy.dtype),
                                          vision_feature_layer=config.vision_feature_layer,
                                          vision_feature_select_strategy=config.vision_feature_select_strategy)
    return _probe_loss(objective, waypoints, target_speeds)


def _parser() -> argparse.ArgumentParser:
    from .route import WAYPOINT_FRAMES  # numpy only

    parser = argparse.ArgumentParser(
        prog="autoprune-train",
        description="Train the tiny LLaVA driving VLA on expert episode bags (CPU); writes safetensors weights "
                    "loadable with autoprune_ros.vla.builder.load_vla and a training.json report.")
    parser.add_argument("--data", required=True, type=Path, nargs="+",
                        help="folder(s) of episode bag folders (with episode.json), searched recursively")
    parser.add_argument("--output", required=True, type=Path, help="folder for the trained model")
    parser.add_argument("--config", type=Path, default=None,
                        help="model config YAML (default: the package's config/models/tiny_llava.yaml)")
    parser.add_argument("--init", default=None, metavar="MODEL",
                        help="start from this model's weights (a bundled name or a folder from autoprune-train) "
                             "instead of a seeded initialisation: fine-tuning, e.g. on supervised-run data; its "
                             "own config is used, so --config must not be given")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--vision-epochs", type=int, default=0,
                        help="epochs of vision pre-training before --epochs: the vision tower and projector learn "
                             "the targets through the vision probe alone, without running the decoder, at about a "
                             "quarter of the cost per sample (default 0: none; docs/training.md)")
    parser.add_argument("--seed", type=int, default=0, help="weights init, data split and order")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW peak learning rate (cosine decay)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--speed-weight", type=float, default=1.0, help="weight of the target-speed L1 term")
    parser.add_argument("--lateral-weight", type=float, default=3.0,
                        help="weight of the lateral (y) waypoint error against the longitudinal one")
    parser.add_argument("--aux-vision-weight", type=float, default=1.0,
                        help="weight of the training-only vision probe's loss (0: no probe); docs/training.md")
    parser.add_argument("--mirror-prob", type=float, default=0.0,
                        help="chance that a training sample is mirrored left-right (image, lateral targets and "
                             "left/right in the instruction); default 0: off (docs/training.md)")
    parser.add_argument("--instruction-balance", type=float, default=0.0,
                        help="draw training samples with probability proportional to count(instruction) ** -B: 0 "
                             "(default) uniform, 1 every instruction equally often, 0.5 the square root between")
    parser.add_argument("--visual-dropout", type=float, default=0.0,
                        help="share of training samples that see only a random part of their visual tokens, so "
                             "that the model keeps driving when they are pruned (default 0: off)")
    parser.add_argument("--visual-keep-min", type=float, default=0.1,
                        help="least fraction of visual tokens a --visual-dropout sample keeps (uniform up to 1)")
    parser.add_argument("--pruned-share", type=float, default=0.0,
                        help="share of training samples whose prefill is pruned as the node prunes it (one at a "
                             "time, so without batching), by a configuration drawn from --pruned-configs: "
                             "pruning-aware training (default 0: off; docs/training.md)")
    parser.add_argument("--pruned-configs", nargs="+", default=["autoprune:22", "autoprune:43", "autoprune:65"],
                        metavar="POLICY:TOKENS",
                        help="pruning configurations for --pruned-share, drawn uniformly per sample (default "
                             "autoprune:22 autoprune:43 autoprune:65)")
    parser.add_argument("--route-lookahead", type=float, default=None, metavar="M",
                        help="give the action head route points up to M metres along the route (the recorded "
                             "reference centreline; vla/route.py). A --init model without a route input gains one, "
                             "with zero weights (default: the model config's action_head.route_lookahead_m)")
    parser.add_argument("--route-points", type=int, default=None, metavar="P",
                        help="with --route-lookahead: the head reads P route points evenly spaced up to M metres "
                             "(default: the model config's action_head.route_points, 1)")
    parser.add_argument("--route-dropout", type=float, default=0.2,
                        help="share of training samples whose route is withheld, so that the model still drives "
                             "from the camera alone when no route arrives (models with a route input; default 0.2)")
    parser.add_argument("--route-lr-scale", type=float, default=20.0,
                        help="learning rate of the head's route branch, as a multiple of --lr: a fine-tune adds it "
                             "with zero weights to a model already trained (default 20)")
    parser.add_argument("--waypoint-frame", choices=WAYPOINT_FRAMES, default=None,
                        help="route: the head's waypoints are (along, left of) the route, laid along it "
                             "(vla/route_frame.py; needs a route input); ego: (x, y) in the ego frame (default: the "
                             "model config's action_head.waypoint_frame, ego). A --init model keeps its head's "
                             "weights and learns the new meaning")
    parser.add_argument("--frame-stride", type=int, default=1,
                        help="train each epoch on every N-th frame, the offset moving on by one each epoch")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of episode seeds held out")
    parser.add_argument("--freeze-vision", action="store_true", help="do not train the CLIP vision tower")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --output")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for name in ("epochs", "batch_size", "threads", "frame_stride"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.vision_epochs < 0:
        parser.error("--vision-epochs must be >= 0")
    if args.vision_epochs and (args.aux_vision_weight == 0 or args.freeze_vision):
        parser.error("--vision-epochs trains the vision tower through the probe: it needs --aux-vision-weight > 0 "
                     "and no --freeze-vision")
    for name in ("lr", "weight_decay", "speed_weight", "lateral_weight", "aux_vision_weight", "route_lr_scale"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0 (lr > 0), got {value}")
    if args.route_lookahead is not None and not (math.isfinite(args.route_lookahead) and args.route_lookahead > 0):
        parser.error(f"--route-lookahead must be a finite number of metres > 0, got {args.route_lookahead}")
    if args.route_points is not None and (args.route_points < 1 or args.route_lookahead is None):
        parser.error("--route-points must be >= 1 and comes with --route-lookahead")
    for name in ("mirror_prob", "instruction_balance", "visual_dropout", "pruned_share", "route_dropout"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    from .pruning_aware import fixed_budget_configs

    try:
        args.pruned_configs = [c.name for c in fixed_budget_configs(args.pruned_configs)]
    except ValueError as exc:
        parser.error(f"--pruned-configs: {exc}")
    if not 0.0 < args.visual_keep_min <= 1.0:
        parser.error(f"--visual-keep-min must be in (0, 1], got {args.visual_keep_min}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.init is not None:
        from autoprune_ros.paths import resolve_model

        from .builder import CONFIG_FILE

        if args.config is not None:
            parser.error("--init takes the model's own config; drop --config")
        try:
            args.init = resolve_model(args.init)
        except FileNotFoundError as exc:
            parser.error(f"--init: {exc}")
        if not (Path(args.init) / CONFIG_FILE).is_file():
            parser.error(f"--init {args.init}: not a saved model (no {CONFIG_FILE}); 'tiny' has no weights to start "
                         "from")
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())) and not args.force:
        parser.error(f"{args.output} exists and is not empty; pass --force to write into it")


def _mean_loss(loader: Any, loss: Callable[[tuple], Any]) -> float | None:
    """The sample-weighted mean of `loss(batch)` over `loader`, without gradients; None for an empty loader."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(loss(batch)) * len(batch[0])
            count += len(batch[0])
    return total / count if count else None


def _evaluate(policy: VLAPolicy, loader: Any, objective: Objective) -> float | None:
    """The policy's mean action loss over `loader`, unpruned (the probe, the token dropout and pruned samples are
    not run)."""
    objective = replace(objective, probe=None, tap=None, dropout=None, pruned=None)
    return _mean_loss(loader, lambda batch: batch_loss(policy, batch, objective)[0])


def _fit(name: str, epochs: int, loaders: Callable[[int], Any], step_loss: Callable[[tuple], tuple],
         params: list, args: argparse.Namespace, epoch_samples: list[int], evaluate: Callable[[], float | None],
         policy: VLAPolicy, log: Any, fast_params: Sequence[Any] = ()) -> tuple[list[dict[str, Any]], float | None]:
    """`epochs` epochs of AdamW (cosine decay from --lr, or --lr x --route-lr-scale for those of `params` in
    `fast_params`; gradients clipped to norm 1) on `params`, minimising
    `step_loss(batch)` = (logged loss, auxiliary loss or None; the auxiliary one is weighted by the probe
    weight). Returns the per-epoch history and the measured seconds per training sample."""
    import torch
    from tqdm import tqdm

    fast = {id(p) for p in fast_params}
    groups = [{"params": [p for p in params if id(p) not in fast]},
              {"params": [p for p in params if id(p) in fast], "lr": args.lr * args.route_lr_scale}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, weight_decay=args.weight_decay)
    steps = sum(math.ceil(n / args.batch_size) for n in epoch_samples)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history: list[dict[str, Any]] = []
    seconds_per_sample: float | None = None
    timed = [0.0, 0]  # seconds and samples of the timed training steps
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        total, count = 0.0, 0
        train_loader = loaders(epoch)
        bar = tqdm(train_loader, desc=f"{name} {epoch}/{epochs}", unit="batch", disable=args.no_progress,
                   file=sys.stderr)
        for step, batch in enumerate(bar):
            step_start = time.perf_counter()
            main, aux = step_loss(batch)
            loss = main if aux is None else main + args.aux_vision_weight * aux
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite training loss at {name} {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            total += main.item() * len(batch[0])
            count += len(batch[0])
            bar.set_postfix(loss=f"{total / count:.3f}")
            if epoch == 1 and (step > 0 or len(train_loader) == 1):  # the first step pays one-off warm-up
                timed[0] += time.perf_counter() - step_start
                timed[1] += len(batch[0])
            if seconds_per_sample is None and timed[1] and (timed[1] >= 32 or step == len(train_loader) - 1):
                seconds_per_sample = timed[0] / timed[1]
                log(f"{name}: time per training sample {seconds_per_sample * 1e3:.0f} ms -> about "
                    f"{seconds_per_sample * epoch_samples[0] / 60:.1f} min per epoch, "
                    f"{seconds_per_sample * sum(epoch_samples) / 60:.1f} min for {epochs} (plus validation)")
        bar.close()
        policy.model.eval()
        val_loss = evaluate()
        policy.model.train()
        history.append({"epoch": epoch, "samples": count, "train_loss": total / count, "val_loss": val_loss,
                        "seconds": time.perf_counter() - epoch_start})
        val_text = "n/a" if val_loss is None else f"{val_loss:.4f}"
        log(f"{name} {epoch}/{epochs}: train loss {total / count:.4f}, val loss {val_text}, "
            f"{history[-1]['seconds']:.1f} s")
    return history, seconds_per_sample


def train(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Run the training described by parsed `args`; returns the training.json report. The torch thread count and
    deterministic-algorithms flag are set for the run and restored afterwards."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(args, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _portable(path: Path) -> str:
    """`path` relative to the package's share folder (or the working directory) when inside it, so the record
    names no machine-specific location."""
    from autoprune_ros.paths import share_dir

    resolved = Path(path).resolve()
    for base in (share_dir(), Path.cwd()):
        if resolved.is_relative_to(base.resolve()):
            return str(resolved.relative_to(base.resolve()))
    return str(path)


def _train(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Subset, WeightedRandomSampler

    from autoprune_ros.paths import config_path

    from .augment import Mirrored, instruction_weights, stride_lengths, stride_subset
    from .builder import CONFIG_FILE, build_tiny_vla, load_model_config, load_vla, save_vla, validate_model_config
    from .dataset import DrivingDataset, collate, find_episodes, kept_episodes, split_by_seed
    from .vision_probe import ProjectorTap, VisionProbe

    torch.manual_seed(args.seed)
    init = None if args.init is None else Path(args.init)
    if args.config is None:
        args.config = init / CONFIG_FILE if init is not None else config_path("models", "tiny_llava.yaml")
    config = load_model_config(args.config)
    if args.route_lookahead is not None:
        head = config["action_head"]
        asked = (args.route_lookahead, head["route_points"] if args.route_points is None else args.route_points)
        own = (head["route_lookahead_m"], head["route_points"])
        if init is not None and own[0] is not None and own != asked:
            raise ValueError(f"--route-lookahead {asked[0]} --route-points {asked[1]}: {init} reads {own[1]} route "
                             f"point(s) up to {own[0]} m")
        head["route_lookahead_m"], head["route_points"] = asked
    if args.waypoint_frame is not None:
        config["action_head"]["waypoint_frame"] = args.waypoint_frame
    config = validate_model_config(config, str(args.config))

    data_names = ", ".join(map(str, args.data))
    all_dirs = sorted({d.resolve() for root in args.data for d in find_episodes(root)})  # once each
    dirs = kept_episodes(all_dirs)
    if not dirs:
        raise ValueError(f"{data_names}: no kept episodes among {len(all_dirs)} episode folder(s)")
    train_dirs, val_dirs = split_by_seed(dirs, args.val_fraction, args.seed)
    train_set = DrivingDataset(train_dirs, config)
    val_set = DrivingDataset(val_dirs, config)
    if len(train_set) == 0:
        raise ValueError(f"{data_names}: no training frame has the full {config['action_head']['num_waypoints']} x "
                         f"{config['action_head']['waypoint_dt']} s future recorded")
    log(f"episodes: {len(all_dirs)} found, {len(dirs)} kept; train {len(train_dirs)} episodes / {len(train_set)} "
        f"samples, val {len(val_dirs)} episodes / {len(val_set)} samples")

    policy = build_tiny_vla(config, seed=args.seed) if init is None else load_vla(init)
    if config["action_head"] != policy.config["action_head"]:
        policy = _adapted(policy, config)
    policy.model.train()
    policy.head.train()
    if args.freeze_vision:
        policy.model.model.vision_tower.requires_grad_(False)
    objective = Objective(args.speed_weight, args.lateral_weight, args.aux_vision_weight)
    if args.visual_dropout > 0:
        objective.dropout = TokenDropout(args.visual_dropout, args.visual_keep_min,
                                         torch.Generator().manual_seed(args.seed + 1))
    objective.route_dropout = args.route_dropout
    objective.route_generator = torch.Generator().manual_seed(args.seed + 3)
    if args.pruned_share > 0:
        from .pruning_aware import PrunedSamples, fixed_budget_configs

        objective.pruned = PrunedSamples(args.pruned_share, fixed_budget_configs(args.pruned_configs),
                                         random.Random(args.seed + 2))
    if args.aux_vision_weight > 0:
        torch.manual_seed(args.seed)
        objective.probe = VisionProbe(policy.visual_tokens_per_image, policy.model.config.text_config.hidden_size,
                                      2 * train_set.num_waypoints + 1)
        objective.tap = ProjectorTap(policy.model.model)
    n_params = sum(p.numel() for p in (*policy.model.parameters(), *policy.head.parameters()))
    params = [p for p in (*policy.model.parameters(), *policy.head.parameters()) if p.requires_grad]
    n_trained = sum(p.numel() for p in params)  # of the saved model; the probe is trained too, then dropped
    if objective.probe is not None:
        params += list(objective.probe.parameters())
    generator = torch.Generator().manual_seed(args.seed)
    augmented = Mirrored(train_set, args.mirror_prob, args.seed)
    sample_instructions = train_set.instructions
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    epoch_samples = stride_lengths(len(train_set), args.frame_stride, args.epochs)
    log(f"parameters: {n_params:,} ({n_trained:,} trained); {args.vision_epochs} vision epochs, then "
        f"{args.epochs} epochs x {math.ceil(epoch_samples[0] / args.batch_size)} steps of "
        f"batch {args.batch_size} (frame stride {args.frame_stride}, mirror probability {args.mirror_prob}, "
        f"instruction balance {args.instruction_balance}, visual dropout {args.visual_dropout} keeping >= "
        f"{args.visual_keep_min}, pruned share {args.pruned_share} of {' '.join(args.pruned_configs)}, route "
        f"{'none' if not policy.uses_route else f'at {policy.route_lookahead_m:g} m, withheld {args.route_dropout}'}"
        f"), waypoints in the {policy.waypoint_frame} frame, {args.threads} threads")

    def loaders(epoch: int) -> Any:
        """The shuffled (or instruction-balanced) training batches of `epoch`."""
        augmented.set_epoch(epoch)
        subset = stride_subset(augmented, args.frame_stride, epoch)
        sampling: dict[str, Any] = {"shuffle": True, "generator": generator}
        if args.instruction_balance > 0:
            indices = subset.indices if isinstance(subset, Subset) else range(len(subset))
            weights = instruction_weights([sample_instructions[i] for i in indices], args.instruction_balance)
            sampling = {"sampler": WeightedRandomSampler(weights.tolist(), len(weights), generator=generator)}
        return DataLoader(subset, batch_size=args.batch_size, collate_fn=collate, num_workers=0, **sampling)

    start = time.perf_counter()
    vision_history: list[dict[str, Any]] = []
    if args.vision_epochs:
        vision_params = [p for p in (*policy.model.model.vision_tower.parameters(),
                                     *policy.model.model.multi_modal_projector.parameters(),
                                     *objective.probe.parameters()) if p.requires_grad]
        vision_history, _ = _fit(
            "vision", args.vision_epochs, loaders, lambda batch: (vision_loss(policy, batch, objective), None),
            vision_params, args, stride_lengths(len(train_set), args.frame_stride, args.vision_epochs),
            lambda: _mean_loss(val_loader, lambda batch: vision_loss(policy, batch, objective)), policy, log)
    history, seconds_per_sample = _fit(
        "epoch", args.epochs, loaders, lambda batch: batch_loss(policy, batch, objective), params, args,
        epoch_samples, lambda: _evaluate(policy, val_loader, objective), policy, log,
        fast_params=() if policy.head.route is None else list(policy.head.route.parameters()))

    if objective.tap is not None:
        objective.tap.close()
    policy.model.eval()
    policy.head.eval()
    policy.model.requires_grad_(True)
    save_vla(policy, args.output)
    report = {
        "config": policy.config,
        "seed": args.seed,
        "hyperparameters": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                          "speed_weight", "lateral_weight", "aux_vision_weight",
                                                          "mirror_prob", "instruction_balance", "visual_dropout",
                                                          "visual_keep_min", "frame_stride", "val_fraction",
                                                          "freeze_vision", "threads", "vision_epochs",
                                                          "pruned_share", "pruned_configs", "route_lookahead",
                                                          "route_points", "route_dropout", "route_lr_scale",
                                                          "waypoint_frame")},
        "data": [_portable(d) for d in args.data],
        "init": None if init is None else _portable(init),
        "config_file": _portable(args.config),
        "train_seeds": sorted(set(train_set.seeds)),
        "val_seeds": sorted(set(val_set.seeds)),
        "train_samples": len(train_set),
        "train_instructions": dict(sorted(Counter(sample_instructions).items())),
        "val_samples": len(val_set),
        "parameters": n_params,
        "trained_parameters": n_trained,
        "vision_epochs": vision_history,
        "epochs": history,
        "seconds_per_sample": seconds_per_sample,
        "total_seconds": time.perf_counter() - start,
        "torch": torch.__version__,
    }
    report.update(_recipe(init, report["total_seconds"]))
    (args.output / TRAINING_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"saved to {args.output} in {report['total_seconds']:.0f} s")
    return report


def _adapted(policy: VLAPolicy, config: dict[str, Any]) -> VLAPolicy:
    """`policy` (loaded with another action_head config) set to the action head of `config`: a head without a route
    input is widened to read the route, the new inputs at zero weight, so training begins from the loaded model's
    own predictions; a new waypoint frame keeps the head's weights."""
    from .policy import VLAPolicy
    from .route import route_feature_size

    head = policy.head
    if config["action_head"]["route_lookahead_m"] != policy.route_lookahead_m:
        head = head.with_route_input(route_feature_size(config["action_head"]["route_points"]))
    return VLAPolicy(policy.model, policy.processor, head, policy.controller, config).to(policy.device, policy.dtype)


def _recipe(init: Path | None, seconds: float) -> dict[str, Any]:
    """The record of the run that `--init` started from, and the seconds of the whole chain of runs that produced
    these weights: what it takes to reproduce them from scratch (a model without a record counts for nothing)."""
    if init is None:
        return {"init_training": None, "recipe_seconds": seconds}
    path = init / TRAINING_FILE
    base = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    base_seconds = 0.0 if base is None else float(base.get("recipe_seconds", base.get("total_seconds", 0.0)))
    return {"init_training": base, "recipe_seconds": base_seconds + seconds}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; exit status 0 on success, 2 on bad arguments or data."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    try:
        train(args)
    except ValueError as exc:
        print(f"autoprune-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
