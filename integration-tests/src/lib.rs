//! Helpers for end-to-end tests: spawn real binaries on free ports, kill them on drop.
