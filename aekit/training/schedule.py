"""The learning-rate plan: a warm-up and cosine decay, continued without a jump when a resume moves the end."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from aekit.core.recipe import TrainConfig
from aekit.lazy import keras, tf

if TYPE_CHECKING:
    from aekit.training.checkpoints import Model


FINAL_RATE = 0.01  # the cosine schedule ends at this fraction of the peak


def _schedule(config: TrainConfig, steps_per_epoch: int | None = None):
    """The optimizer's learning rate: a number, or a RunSchedule whose plan `_plan_schedule` sets once restored
    (given `steps_per_epoch`, the plan of a new run of `config.epochs`)."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    schedule = _run_schedule_class()()
    if steps_per_epoch is not None:
        schedule.plan = _new_plan(config, config.epochs * steps_per_epoch)
    return schedule


def _new_plan(config: TrainConfig, total_steps: int) -> dict:
    """A new run's plan: a warm-up (at most a quarter of the run), then a cosine decay to 1% by the last step."""
    total = max(total_steps, 1)
    return {
        "peak": config.learning_rate,
        "warmup_steps": min(config.warmup_steps, total // 4),
        "base_total_steps": total,
        "extensions": [],
    }


def _run_schedule_class():
    class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """The run's plan (see `_plan_schedule`): a warm-up and cosine decay over the steps first planned,
        then, for each resume that changed the steps left, a cosine from the rate reached to 1% of the peak."""

        def __init__(self, plan: dict | None = None):
            self.plan = plan

        def __call__(self, step):
            plan, step = self.plan, tf.cast(step, tf.float32)
            warmup = plan["warmup_steps"]
            base = keras.optimizers.schedules.CosineDecay(
                plan["peak"] / 10 if warmup else plan["peak"],
                decay_steps=plan["base_total_steps"] - warmup,
                alpha=FINAL_RATE,
                warmup_target=plan["peak"] if warmup else None,
                warmup_steps=warmup,
            )
            rate = base(step)
            for piece in plan["extensions"]:
                start, end = float(piece["from_step"]), float(piece["to_step"])
                done = tf.clip_by_value((step - start) / max(end - start, 1.0), 0.0, 1.0)
                cosine = piece["to_lr"] + (piece["from_lr"] - piece["to_lr"]) * 0.5 * (1.0 + tf.cos(math.pi * done))
                rate = tf.where(step >= start, tf.cast(cosine, rate.dtype), rate)
            return rate

        def get_config(self) -> dict:
            return {"plan": self.plan}

    return RunSchedule


def _plan_schedule(
    previous: dict | None, config: TrainConfig, model: Model, steps_per_epoch: int, start_epoch: int, start_step: int
):
    """The learning-rate plan of this (re)start, set on the optimizer's schedule and recorded in config.json.

    A new run plans a warm-up and cosine decay over all its steps. A resume whose steps left still end
    where the plan ends keeps it, so the run is the run it would have been. A resume that moves the end
    (more --epochs, another --batch-size) continues from the rate it reached, with a cosine down to 1%
    of the peak at the new last step: no jump. A new --learning-rate starts that cosine at the new peak.
    """
    if config.lr_schedule != "cosine":
        return None
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # LossScaleOptimizer wraps the one that steps
    schedule = optimizer._learning_rate  # the RunSchedule given to the constructor
    done = int(optimizer.iterations.numpy())
    end = done + (config.epochs - start_epoch) * steps_per_epoch - start_step
    previous = _previous_plan(previous) if done else None
    if previous is None:
        plan = _new_plan(config, end)
    else:
        plan = {**previous, "extensions": list(previous["extensions"])}
        last_end = plan["extensions"][-1]["to_step"] if plan["extensions"] else plan["base_total_steps"]
        if last_end != end or plan.get("current_peak", plan["peak"]) != config.learning_rate:
            schedule.plan = plan
            reached = float(schedule(done).numpy())
            new_peak = plan.get("current_peak", plan["peak"]) != config.learning_rate
            plan["extensions"].append(
                {
                    "from_step": done,
                    "to_step": max(end, done + 1),
                    "from_lr": config.learning_rate if new_peak else reached,
                    "to_lr": FINAL_RATE * config.learning_rate,
                }
            )
            plan["current_peak"] = config.learning_rate
    schedule.plan = plan
    return plan


def _previous_plan(record: dict | None) -> dict | None:
    """The plan a run's config.json recorded; for a run recorded before plans, the one its recipe implied."""
    if record is None:
        return None
    if isinstance(record.get("lr_plan"), dict):
        return record["lr_plan"]
    recipe, steps = TrainConfig.from_json(record["recipe"]), record.get("steps_per_epoch")
    if recipe.lr_schedule != "cosine" or not isinstance(steps, int) or recipe.learning_rate is None:
        return None
    total = recipe.epochs * steps
    warmup = min(recipe.warmup_steps or 0, total // 4)
    return {"peak": recipe.learning_rate, "warmup_steps": warmup, "base_total_steps": total, "extensions": []}
