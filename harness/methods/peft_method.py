"""peft methods that need nothing but their peft config: one registry line each
(`peft_method.of("loha", "LoHaConfig", ...)` in harness/methods/__init__.py).

Every field of the config class is an option under peft's name, defaults are peft's (its
per-architecture `target_modules` where it has them); the harness adds `lr` and sets the task
type from the model's head (encoders then also train their classification head, peft's
modules_to_save for sequence classification). The artifact is peft's adapter folder.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, create_model

from harness.methods import peft_options
from harness.methods.common import save_pretrained


@dataclass(frozen=True)
class PeftMethod:
    """A method satisfying harness.methods.Method through one peft config class."""

    NAME: str
    Options: type[peft_options.PeftOptions]
    TRAINS: bool = True
    PEFT_ADAPTER: bool = True  # a peft adapter over the frozen base: disabling it gives the base back

    def apply(self, model, options: dict, family: str, head: str):
        return peft_options.apply(self.Options, model, options, head)

    def save(self, model, path) -> None:
        save_pretrained(model, path)


def of(name: str, config: str, lr: float, about: str) -> PeftMethod:
    """The method `name` on peft's `config` class, with a default learning rate and a line saying
    what trains."""
    options = create_model(
        f"{config.removesuffix('Config')}Options",
        __base__=peft_options.PeftOptions,
        __doc__=f"{about}: peft {config}, every field under peft's name (defaults: peft's)",
        lr=(float, Field(lr, gt=0, le=1, description=f"peak learning rate (default {lr:g}: a starting point, "
                                                         "not calibrated on this project's tasks)")),
    )
    options.PEFT_CONFIG = config
    return PeftMethod(name, options)
