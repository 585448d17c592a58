//! jobs (see lib.rs for the layout).
