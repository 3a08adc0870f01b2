"""Teacher traces: a reasoner over training records or evaluation tasks into resumable parquet
shards (``job``), joined back into training records and the eval's trace cache (``join``);
``cli`` is ``tte-fast traces``."""

from tte_fast.traces.engine_reasoner import EngineReasoner
from tte_fast.traces.job import TraceJobError, generate_traces
from tte_fast.traces.sources import TraceInput, TraceInputs

__all__ = ["EngineReasoner", "TraceInput", "TraceInputs", "TraceJobError", "generate_traces"]
