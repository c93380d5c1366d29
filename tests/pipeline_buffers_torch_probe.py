"""tests/pipeline_buffers_probe.py over torch's own PipelineStage: the executor's just-in-time receive buffers
(execute/pipeline.py `_just_in_time_stage_class`) left out, so that the inventory is of what torch 2.13's stage
holds (`Execution.pipeline_buffers` "per_microbatch", torchtitan's)."""

import importlib.util
from pathlib import Path

from autoconf.execute import pipeline

_spec = importlib.util.spec_from_file_location("pipeline_buffers_probe",
                                               Path(__file__).with_name("pipeline_buffers_probe.py"))
_inventory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_inventory)
InventoryProbe = _inventory.Probe


class Probe(InventoryProbe):
    def __init__(self, plan):
        super().__init__(plan)
        self.just_in_time = pipeline._just_in_time_stage_class
        pipeline._just_in_time_stage_class = lambda base: base

    def finish(self) -> dict:
        pipeline._just_in_time_stage_class = self.just_in_time
        return super().finish()
