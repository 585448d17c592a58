//! Composition root: wires store, blobs, jobs, infer and api together.
