//! Human approvals of escalated calls. Only `resolve` (the engine's `approve`) can
//! grant one: nothing in a call's arguments is consulted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Resolved approvals kept for listing; older ones are dropped past this count.
const KEEP_RESOLVED: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalInfo {
    pub id: String,
    pub tool: String,
    pub tenant: Option<String>,
    pub session: Option<String>,
    /// Why the call was escalated.
    pub reason: String,
    pub status: ApprovalStatus,
    pub created: String,
    pub resolved: Option<String>,
    pub resolution_reason: Option<String>,
}

struct Entry {
    info: ApprovalInfo,
    seq: u64,
    /// An approval lets one call through.
    used: bool,
    tx: watch::Sender<ApprovalStatus>,
}

#[derive(Default)]
pub struct Approvals {
    entries: Mutex<HashMap<String, Entry>>,
    seq: AtomicU64,
}

impl Approvals {
    /// A new pending approval; the receiver sees its resolution.
    pub fn request(
        &self,
        tool: &str,
        tenant: Option<&str>,
        session: Option<&str>,
        reason: String,
    ) -> (ApprovalInfo, watch::Receiver<ApprovalStatus>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let now = jiff::Timestamp::now();
        // Unique per engine and not guessable from the sequence alone; approving
        // still needs the engine API, so this is not a secret.
        let id = format!("apr_{:x}{:04x}", now.as_nanosecond() as u64 & 0xffff_ffff_ffff, seq & 0xffff);
        let info = ApprovalInfo {
            id: id.clone(),
            tool: tool.to_string(),
            tenant: tenant.map(str::to_string),
            session: session.map(str::to_string),
            reason,
            status: ApprovalStatus::Pending,
            created: now.to_string(),
            resolved: None,
            resolution_reason: None,
        };
        let (tx, rx) = watch::channel(ApprovalStatus::Pending);
        let mut entries = self.entries.lock();
        if entries.len() > KEEP_RESOLVED {
            let mut resolved: Vec<(u64, String)> = entries
                .iter()
                .filter(|(_, e)| e.info.status != ApprovalStatus::Pending)
                .map(|(k, e)| (e.seq, k.clone()))
                .collect();
            resolved.sort();
            for (_, k) in resolved.iter().take(resolved.len().saturating_sub(KEEP_RESOLVED / 2)) {
                entries.remove(k);
            }
        }
        entries.insert(id, Entry { info: info.clone(), seq, used: false, tx });
        (info, rx)
    }

    /// Take back an approval a previous process recorded (the store): it keeps its
    /// id and status; an approved one lets one call through again, since the call
    /// it was granted for may not have run before that process stopped.
    pub fn restore(&self, info: ApprovalInfo) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(info.status);
        self.entries.lock().entry(info.id.clone()).or_insert(Entry { info, seq, used: false, tx });
    }

    /// Approve or deny a pending approval.
    pub fn resolve(&self, id: &str, approved: bool, reason: Option<&str>) -> Result<ApprovalInfo> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(id).ok_or_else(|| Error::NotFound(format!("no approval with id '{id}'")))?;
        if entry.info.status != ApprovalStatus::Pending {
            return Err(Error::InvalidArgument(format!(
                "approval '{id}' is already {}",
                if entry.info.status == ApprovalStatus::Approved { "approved" } else { "denied" }
            )));
        }
        let status = if approved { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
        entry.info.status = status;
        entry.info.resolved = Some(jiff::Timestamp::now().to_string());
        entry.info.resolution_reason = reason.map(str::to_string);
        // No receiver (a fail-fast call) is fine: the status is recorded.
        let _ = entry.tx.send(status);
        Ok(entry.info.clone())
    }

    /// Approvals, oldest first; only the pending ones when `pending_only`.
    pub fn list(&self, pending_only: bool) -> Vec<ApprovalInfo> {
        let entries = self.entries.lock();
        let mut list: Vec<(u64, ApprovalInfo)> = entries
            .values()
            .filter(|e| !pending_only || e.info.status == ApprovalStatus::Pending)
            .map(|e| (e.seq, e.info.clone()))
            .collect();
        list.sort_by_key(|(seq, _)| *seq);
        list.into_iter().map(|(_, info)| info).collect()
    }

    /// Use an approved approval for one call of `tool`; it cannot be used again.
    pub fn consume(&self, id: &str, tool: &str) -> Result<()> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(id).ok_or_else(|| Error::NotFound(format!("no approval with id '{id}'")))?;
        if entry.info.tool != tool {
            return Err(Error::PermissionDenied(format!("approval '{id}' is for '{}', not '{tool}'", entry.info.tool)));
        }
        match (entry.info.status, entry.used) {
            (ApprovalStatus::Approved, false) => {
                entry.used = true;
                Ok(())
            }
            (ApprovalStatus::Approved, true) => {
                Err(Error::PermissionDenied(format!("approval '{id}' was already used")))
            }
            (ApprovalStatus::Pending, _) => Err(Error::ApprovalRequired {
                message: format!("approval '{id}' is still pending"),
                approval_id: id.to_string(),
            }),
            (ApprovalStatus::Denied, _) => Err(Error::PermissionDenied(format!("approval '{id}' was refused"))),
        }
    }

    /// Follow an approval's status (the receiver sees its resolution).
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<ApprovalStatus>> {
        self.entries.lock().get(id).map(|e| e.tx.subscribe())
    }

    pub fn get(&self, id: &str) -> Option<ApprovalInfo> {
        self.entries.lock().get(id).map(|e| e.info.clone())
    }
}
