//! Switchboard's benchmarks: the core alone (`core_scale`), and later the load generator.
