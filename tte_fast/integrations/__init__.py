"""Adapters to other engines and benchmarks, each behind an optional extra (``tte_fast[mteb]``)."""
