//! jcdi-forwarder: collects JumpCloud Directory Insights events into a durable local queue and forwards them
//! to the Sekoia.io HTTP intake, losing none.
//!
//! The data's path, module by module: [`config`] → [`source`] (pollers) → [`queue`] (sled) → [`sink`]
//! (forwarder, which sends each batch through [`delivery`]); [`outbox`] replaces the forwarder on hosts
//! that send nothing (sealed bundle files, and `ship` to send them from another host); [`agent`] wires
//! them, [`cli`] is the command line, [`metrics`] counts what flows and [`admin`] serves it,
//! [`standin`] serves built-in imitations of both services for `demo`, the tests and the benchmarks;
//! [`privacy`] keeps the queue's files to the agent's user; [`harness`] runs the agent against the stand-ins
//! for `demo`, the integration tests and the end-to-end bench.

pub mod admin;
pub mod agent;
pub mod allocator;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod escape;
pub mod event;
pub mod harness;
pub mod http;
pub mod metrics;
pub mod normalize;
pub mod ops;
pub mod outbox;
pub mod privacy;
pub mod probe;
pub mod queue;
pub mod retry;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod standin;
