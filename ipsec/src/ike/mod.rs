//! IKEv2 (RFC 7296), sans-IO.
pub mod cert;
pub mod config;
pub mod cp;
pub mod dh;
pub mod dn;
pub mod engine;
pub mod keys;
pub mod pool;
pub mod proposal;
pub mod sk;
pub mod wire;

pub use cert::Credentials;
pub use config::{EngineConfig, Identity, PeerConfig};
pub use engine::{
    Action, ChildSaInstall, Engine, EngineError, Failure, IkeCounters, IkeSaId, IkeState, VirtualIp,
};
pub use pool::{PoolConfig, PoolStatus};
