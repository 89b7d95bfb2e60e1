//! The integration tests, in one binary so that it links once: the agent in-process and as the real binary,
//! against the stand-ins on 127.0.0.1, through `jcdi_forwarder::harness`. What only tests need (the test
//! keys, a test bed with fast settings, a CONNECT proxy and a TLS front) is in `support`.

mod support;

mod cli;
mod crash;
mod damage;
mod disk_full;
mod hostile;
mod in_flight;
mod late;
mod monitoring;
mod network;
mod operating;
mod outbox;
mod pacing;
mod pipeline;
mod powercut;
mod streamed;
