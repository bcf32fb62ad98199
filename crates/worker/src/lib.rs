//! Chorus worker.
