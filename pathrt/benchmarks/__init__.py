"""The benchmark suite behind `pathrt bench` (installed as `pathrt.benchmarks`)."""
