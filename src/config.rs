//! Configuration: clap derive with `TEMPER_*` environment variables.
