//! UTP Runtime core: UTCP manuals, discovery, the tool registry and search, and
//! calling tools over their transports, and (as they land) policy, events, workflows and durable execution.
//!
//! Everything is driven through [`Engine`]. The bindings (C, Python, Node) and the
//! CLI are thin layers over it; this crate knows nothing of them.

pub mod config;
pub mod discovery;
pub mod domain;
mod durable;
pub mod engine;
pub mod error;
pub mod events;
pub mod host;
mod external_refs;
pub mod json;
pub mod manual;
pub mod openapi;
pub mod parse;
pub mod planner;
pub mod registry;
pub mod search;
pub mod store;
pub mod transport;
pub mod vars;
pub mod workflow;

pub use config::Config;
pub use discovery::{DiscoveryReport, FileReport, Outcome};
pub use domain::{ApprovalInfo, ApprovalStatus, HostRule, HostVerdict};
pub use durable::StoreConfig;
pub use engine::{CallOptions, CallTrace, Engine, ManualSource};
pub use error::{Error, ErrorCode, Result};
pub use events::{Event, EventBus, EventHandler, HistoryFilter, SubscriptionId};
pub use manual::{Auth, CallTemplate, Manual, Tool};
pub use registry::RegisteredTool;
pub use tokio_util::sync::CancellationToken;
pub use transport::{BlockingCall, CallThread, ItemStream, NativeHandler};

/// The runtime's version (all artifacts share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
