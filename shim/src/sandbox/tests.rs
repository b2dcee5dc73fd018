//! Unit tests of the sandbox state machine and boot failure paths (FakeVmm, FakeAgent, FakeHost).
