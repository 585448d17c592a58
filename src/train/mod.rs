//! train (see lib.rs for the layout).
