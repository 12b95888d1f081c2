//! An in-process stand-in for ECS, for laptops and CI: it keeps a protection flag with an expiry
//! exactly as ECS would and logs the call it would have made.

use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use super::backend::{minutes, BackendError, ProtectionBackend, ProtectionState};

/// Simulates ECS task protection in memory.
#[derive(Debug, Default)]
pub struct LocalBackend {
    state: Mutex<Option<SystemTime>>,
}

impl LocalBackend {
    /// A backend whose task starts unprotected.
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self, slot: &Option<SystemTime>) -> ProtectionState {
        match slot {
            Some(at) if *at > SystemTime::now() => ProtectionState {
                enabled: true,
                expires_at: Some(*at),
            },
            _ => ProtectionState {
                enabled: false,
                expires_at: None,
            },
        }
    }
}

#[async_trait]
impl ProtectionBackend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn describe(&self) -> String {
        "local (in-process simulation; no ECS calls are made)".to_string()
    }

    async fn set_protection(
        &self,
        enabled: bool,
        expires_in_minutes: u32,
    ) -> Result<ProtectionState, BackendError> {
        let mut slot = crate::lock(&self.state);
        if enabled {
            tracing::debug!(
                "local backend: would call ECS UpdateTaskProtection(protectionEnabled=true, expiresInMinutes={expires_in_minutes})"
            );
            *slot = Some(SystemTime::now() + minutes(expires_in_minutes));
        } else {
            tracing::debug!(
                "local backend: would call ECS UpdateTaskProtection(protectionEnabled=false)"
            );
            *slot = None;
        }
        Ok(self.current(&slot))
    }

    async fn get_protection(&self) -> Result<ProtectionState, BackendError> {
        let slot = crate::lock(&self.state);
        Ok(self.current(&slot))
    }
}
