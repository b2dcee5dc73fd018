//! Helpers for the offline checks of runtimeclass/ (see tests/).
