//! Chorus coordinator.
