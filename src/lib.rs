//! jcdi-forwarder: collects JumpCloud Directory Insights events and forwards them to Sekoia.io.

pub mod normalize;
