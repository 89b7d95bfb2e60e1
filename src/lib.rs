//! jcdi-forwarder: collects JumpCloud Directory Insights events into a durable local queue and forwards them
//! to the Sekoia.io HTTP intake, losing none.
//!
//! The data's path, module by module: [`config`] → [`source`] (pollers) → [`queue`] (sled) → [`sink`]
//! (forwarder); [`agent`] wires them, [`cli`] is the command line, [`metrics`] counts what flows and [`admin`] serves it,
//! [`standin`] serves built-in imitations of both services for `demo`, the tests and the benchmarks;
//! [`share`] keeps each stream to its share of the queue; [`privacy`] keeps the queue's files to the agent's user.

pub mod admin;
pub mod agent;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod event;
pub mod http;
pub mod metrics;
pub mod normalize;
pub mod ops;
pub mod privacy;
pub mod queue;
pub mod recovery;
pub mod retry;
pub mod share;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod standin;
