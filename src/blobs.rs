//! Files on disk under the data dir: atomic writes (tmp + rename), streamed uploads.
