"""Layer 7: the measurement harness (dispatch overhead, throughput, a workload)."""
