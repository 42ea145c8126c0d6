"""SAPT (Zhao et al., 2024): a new block per task, mixed per input by the shared attention router, which
trains with every stage; attentive reflection keeps the router from forgetting old tasks.

Two deviations, both configurable (docs/method.md): the router warm-up (`warmup_steps`: the new block
first learns alone) and the router centre; optionally a new key fitted to the task (`router_key_init: task`).
"""
from __future__ import annotations

from sapt.methods.base import Method, register


@register
class SAPT(Method):
    name = "sapt"
    summary = "one {block} per task, mixed per input by the shared attention router, with no task id at test time"

    def settings(self, cfg):
        rows = [("router: query MLP hidden width", str(cfg.query_hidden)),
                ("router: learning rate", f"{cfg.router_lr:g}" if cfg.router_lr is not None else f"{cfg.lr:g} (= lr)"),
                ("router: frozen share of each later stage's steps", f"{cfg.router_warmup:g}"),
                ("router: centred query", str(cfg.router_centre).lower()),
                ("router: a new task's key", cfg.router_key_init),
                ("router: schedule", cfg.router_schedule if cfg.router_schedule == "joint" else
                 f"learn, then route ({cfg.router_fit_steps} router steps after each block, "
                 f"reflection KL weight {cfg.router_fit_kl:g})")]
        if cfg.route_without_definition:
            rows.append(("router: share of inputs also fitted without their definition",
                         f"{cfg.route_without_definition:g} (routes inputs given without a definition)"))
        if cfg.router_ce and cfg.router_schedule == "joint":
            rows.append(("router: routing supervision (CE to the stage's block)", f"{cfg.router_ce:g}"))
        if not cfg.reflection:
            return rows + [("attentive reflection", "off (ablated)")]
        kl = f"{cfg.kl_ratio:g}" if cfg.kl_ratio is not None else "per model family and benchmark"
        return rows + [("attentive reflection", f"on: {cfg.reflection_source} inputs of earlier tasks, KL weight {kl}"),
                       ("replay inputs per task", f"{cfg.pseudo_ratio:g} of its training size, at most {cfg.pseudo_max}")]
    routed = True

    def reflects(self, cfg):
        return cfg.reflection

    def weights(self, model, batch, task_index, training):
        return None  # the router's

    def warmup_steps(self, cfg, t, steps_per_epoch):
        """The first `router_warmup` share of stage t's steps, for t > 0 (see `sapt.stage_trainer`); with
        learn-then-route, the whole stage."""
        if cfg.router_schedule == "learn-then-route":
            return cfg.epochs * steps_per_epoch
        return round(cfg.router_warmup * cfg.epochs * steps_per_epoch) if t > 0 else 0

    def fits_router(self, cfg):
        return cfg.router_schedule == "learn-then-route"

    def prepare_stage(self, model, task, t, cfg, old_prompts=()):
        from sapt.distributed import get_dist
        from sapt.router_setup import init_key_from_task, update_centre

        super().prepare_stage(model, task, t, cfg, old_prompts)
        if cfg.router_centre:
            update_centre(model, task, t, cfg)
            get_dist().broadcast_parameters([model.router.centre])  # bit-identical on every process
        if cfg.router_key_init == "task" and t > 0:
            # train_stage broadcasts the trainable parameters, the key with them
            init_key_from_task(model, task, t, cfg, old_prompts)
