//! store (see lib.rs for the layout).
