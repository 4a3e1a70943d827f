//! The handlers this node can run, by task name.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::handler::BoxHandler;
use crate::task::TaskOptions;

/// A registered handler with its options.
pub(crate) struct Registered {
    pub(crate) handler: BoxHandler,
    pub(crate) options: TaskOptions,
}

/// Task name → handler. Registrations are never removed.
#[derive(Default)]
pub(crate) struct Registry {
    handlers: RwLock<HashMap<String, Arc<Registered>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    /// Adds a handler.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateTask`] if the name is taken.
    pub(crate) fn insert(&self, name: &str, registered: Registered) -> Result<()> {
        let mut handlers = self
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if handlers.contains_key(name) {
            return Err(Error::DuplicateTask(name.to_owned()));
        }
        handlers.insert(name.to_owned(), Arc::new(registered));
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Registered>> {
        self.handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every registered name (the tasks this node claims).
    pub(crate) fn names(&self) -> Vec<String> {
        self.handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}
