//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay in `cargo test`,
//! so both drive the core the same way. Not part of the stable API.
