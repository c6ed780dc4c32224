//! Command-line parsing and config resolution, shared by both shells (pure: no file reading).
