"""Probe for tests/test_dropout.py (scripts/executor_layouts.py option "probe"): `finish()` returns this rank's
local values of the first attention norm's weight (replicated over the TP ranks) after its plan trained."""

from autoconf.execute import train as train_module


class Probe:
    def __init__(self, plan):
        self.trainers = []
        self.init = init = train_module.Trainer.__init__
        trainers = self.trainers

        def remembered_init(trainer, *args, **kwargs):
            init(trainer, *args, **kwargs)
            trainers.append(trainer)

        train_module.Trainer.__init__ = remembered_init

    def finish(self) -> list[float]:
        train_module.Trainer.__init__ = self.init
        weight = next(p for n, p in self.trainers[0].models[0].named_parameters() if "attention_norm" in n)
        local = weight.to_local() if hasattr(weight, "to_local") else weight
        return local.detach().flatten().tolist()
