//! zoo (see lib.rs for the layout).
