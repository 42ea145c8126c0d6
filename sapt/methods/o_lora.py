"""O-LoRA (Wang et al., 2023): inc-lora whose new block's A is pushed orthogonal to every earlier block's A,
`lambda_1 * sum_layers sum_{i<t} |A_i A_t^T|_1`, plus `lambda_2 * sum ||theta_t||_2` on the new block
(`--olora-lambda1/2`, declared here: `OLoRAOptions`). The block type computes both terms
(`sapt.modules.blocks.lora.losses`)."""
from __future__ import annotations

from dataclasses import dataclass

from sapt.methods.base import register
from sapt.methods.inc_lora import IncLoRA
from sapt.options import NON_NEGATIVE, option


@dataclass(frozen=True)
class OLoRAOptions:
    """o-lora's keys of the run config (section method)."""

    olora_lambda1: float = option(0.5, bounds=NON_NEGATIVE,
                                  section="method", help="o-lora: weight of the orthogonality loss")
    olora_lambda2: float = option(0.0, bounds=NON_NEGATIVE, section="method", help="o-lora: weight of the L2 term")


@register
class OLoRA(IncLoRA):
    name = "o-lora"
    summary = ("O-LoRA, one LoRA block per task with each new A kept orthogonal to the earlier ones; at test time "
               "every block with weight 1")
    Options = OLoRAOptions

    def settings(self, router, optim, arm):
        return [("O-LoRA lambda1 / lambda2", f"{self.lambda_1:g} / {self.lambda_2:g}")]

    def __init__(self, lambda_1: float = OLoRAOptions.olora_lambda1, lambda_2: float = OLoRAOptions.olora_lambda2):
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2

    @classmethod
    def from_options(cls, options):
        return cls(options.olora_lambda1, options.olora_lambda2)

    def refuses_pet(self, pet):
        if pet == "lora":
            return None
        return f"o-lora's orthogonality loss is defined on LoRA's A matrices; it cannot use pet: {pet} (use --pet lora)"

    def extra_loss(self, model, t):
        return self.lambda_1 * orthogonality_loss(model, t) + self.lambda_2 * l2_loss(model, t)


def orthogonality_loss(model, t: int):
    """sum over adapted projections and earlier blocks i of sum |A_i A_t^T| (zero iff every row of A_t is
    orthogonal to every row of every earlier A)."""
    return model.blocks.extra_loss("orthogonality", t)


def l2_loss(model, t: int):
    """sum over adapted projections of ||A_t||_2 + ||B_t||_2."""
    return model.blocks.extra_loss("l2", t)
