//! Air-gapped sites: instead of sending to the intake, the agent seals every stream's events into bundle
//! files in a folder ([`writer`]), which leave the host by any one-way means; `jcdi-forwarder ship`
//! ([`ship`]) sends them from a host that reaches Sekoia.io. The file format is [`bundle`]'s; how files are
//! written so that they survive a crash is [`durable`]'s. See docs/outbox.md.

pub mod bundle;
pub mod durable;
pub mod ship;
pub mod writer;
