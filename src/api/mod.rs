//! api (see lib.rs for the layout).
