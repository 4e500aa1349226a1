//! Tests of the runtime (`crates/ulp-runtime`) as built: see `tests/`.
