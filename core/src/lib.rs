//! UTP Runtime core: UTCP manuals, discovery, the tool registry and search, and
//! calling tools over their transports, and (as they land) policy, events, workflows and durable execution.
//!
//! Everything is driven through [`Engine`]. The bindings (C, Python, Node) and the
//! CLI are thin layers over it; this crate knows nothing of them.

mod admission;
pub mod config;
mod discovery;
pub mod domain;
mod engine;
pub mod error;
pub mod events;
mod external_refs;
mod files;
pub mod host;
pub mod json;
mod manual;
pub mod openapi;
pub mod parse;
pub mod planner;
mod registry;
mod schema;
pub mod search;
pub mod store;
mod transport;
mod vars;
pub mod workflow;

pub use config::Config;
pub use discovery::{DiscoveryReport, FileReport, Outcome};
pub use domain::{ApprovalInfo, ApprovalStatus, HostRule, HostVerdict};
pub use engine::{
    CallOptions, CallTrace, Engine, IntentContext, IntentHandler, IntentTarget, ManualSource, StoreConfig,
};
pub use error::{Error, ErrorCode, Result};
pub use events::{Event, EventBus, EventHandler, HistoryFilter, SubscriptionId};
pub use manual::{Auth, CallTemplate, Manual, Tool};
pub use registry::RegisteredTool;
pub use tokio_util::sync::CancellationToken;
pub use transport::{
    BlockingCall, CallThread, ItemStream, NativeHandler, host_callbacks_here, poll_with_callbacks, run_host_callback,
};

/// The runtime's version (all artifacts share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
