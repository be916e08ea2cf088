//! Locks that survive a panic elsewhere: the data behind a poisoned mutex is still what the
//! last writer left (every writer here replaces whole values), so readers carry on.
use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
