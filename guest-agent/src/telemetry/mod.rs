//! Telemetry: an empty room. The eBPF syscall collector and its guest→host stream will live
//! here. There is no code yet.
