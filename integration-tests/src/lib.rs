//! Black-box tests of whole Magnetar processes: standalone, or etcd + bookies + brokers on
//! loopback ports, driven by the real Pulsar clients. The process harness itself lives in
//! `magnetar-testkit` so that crate-level test suites (meta, bookie) can share it.
//! Nothing here is linked into a shipped binary.
