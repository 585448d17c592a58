//! infer (see lib.rs for the layout).
