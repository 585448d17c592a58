//! Metric and span names in one place.
