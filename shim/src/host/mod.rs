//! The host side's processes: helper programs the shim starts and supervises (child.rs).

pub mod child;
