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

    def settings(self, router, optim, arm):
        rows = [("router: query MLP hidden width", str(router.query_hidden)),
                ("router: learning rate",
                 f"{optim.router_lr:g}" if optim.router_lr is not None else f"{optim.lr:g} (= lr)"),
                ("router: frozen share of each later stage's steps", f"{router.router_warmup:g}"),
                ("router: centred query", str(router.router_centre).lower()),
                ("router: a new task's key", router.router_key_init),
                ("router: schedule", router.router_schedule if router.router_schedule == "joint" else
                 f"learn, then route ({router.router_fit_steps} router steps after each block, "
                 f"reflection KL weight {router.router_fit_kl:g})")]
        if router.route_without_definition:
            rows.append(("router: share of inputs also fitted without their definition",
                         f"{router.route_without_definition:g} (routes inputs given without a definition)"))
        if router.router_ce and router.router_schedule == "joint":
            rows.append(("router: routing supervision (CE to the stage's block)", f"{router.router_ce:g}"))
        if not arm.reflection:
            return rows + [("attentive reflection", "off (ablated)")]
        kl = f"{arm.kl_ratio:g}" if arm.kl_ratio is not None else "per model family and benchmark"
        return rows + [("attentive reflection", f"on: {arm.reflection_source} inputs of earlier tasks, KL weight {kl}"),
                       ("replay inputs per task", f"{arm.pseudo_ratio:g} of its training size, at most {arm.pseudo_max}")]
    routed = True

    def reflects(self, arm):
        return arm.reflection

    def weights(self, model, batch, task_index, training):
        return None  # the router's

    def warmup_steps(self, router, epochs, t, steps_per_epoch):
        """The first `router_warmup` share of stage t's steps, for t > 0 (see `sapt.stage_trainer`); with
        learn-then-route, the whole stage."""
        if router.router_schedule == "learn-then-route":
            return epochs * steps_per_epoch
        return round(router.router_warmup * epochs * steps_per_epoch) if t > 0 else 0

    def fits_router(self, router):
        return router.router_schedule == "learn-then-route"

    def prepare_stage(self, model, task, t, block, router, decoding, old_prompts=()):
        from sapt.distributed import get_dist
        from sapt.router_setup import init_key_from_task, update_centre

        super().prepare_stage(model, task, t, block, router, decoding, old_prompts)
        if router.router_centre:
            update_centre(model, task, t, decoding)
            get_dist().broadcast_parameters([model.router.centre])  # bit-identical on every process
        if router.router_key_init == "task" and t > 0:
            # train_stage broadcasts the trainable parameters, the key with them
            init_key_from_task(model, task, t, decoding, old_prompts)
