//! `PJRT_Event`: completion of an asynchronous transfer or execution.

use std::ptr::NonNull;
use std::sync::Arc;

use super::{call, ffi, plugin::Plugin};
use crate::Result;

/// An owned PJRT event, destroyed on drop.
pub(crate) struct Event {
    plugin: Arc<Plugin>,
    raw: NonNull<ffi::PJRT_Event>,
}

impl Event {
    /// Wraps an event the plugin returned; `None` for a null pointer.
    ///
    /// # Safety
    /// `raw` is null or a live event of `plugin` that nothing else owns: the `Event`
    /// destroys it.
    pub(crate) unsafe fn from_raw(plugin: &Arc<Plugin>, raw: *mut ffi::PJRT_Event) -> Option<Event> {
        NonNull::new(raw).map(|raw| Event { plugin: plugin.clone(), raw })
    }

    /// Whether the event is ready, without blocking.
    pub(crate) fn is_ready(&self) -> Result<bool> {
        let mut a = ffi::PJRT_Event_IsReady_Args::new();
        a.event = self.raw.as_ptr();
        // SAFETY: the event is alive (`self` owns it).
        unsafe { call!(self.plugin, PJRT_Event_IsReady, &mut a) }?;
        Ok(a.is_ready)
    }

    /// The error a ready event carries, if any.
    pub(crate) fn into_error(self) -> Result<()> {
        let mut a = ffi::PJRT_Event_Error_Args::new();
        a.event = self.raw.as_ptr();
        // SAFETY: the event is alive and ready (callers check `is_ready` first, as the header
        // requires).
        unsafe { call!(self.plugin, PJRT_Event_Error, &mut a) }
    }

    /// Blocks until the event is ready; returns the error it carries, if any.
    pub(crate) fn wait(self) -> Result<()> {
        let mut a = ffi::PJRT_Event_Await_Args::new();
        a.event = self.raw.as_ptr();
        // SAFETY: the event is alive (`self` owns it).
        unsafe { call!(self.plugin, PJRT_Event_Await, &mut a) }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Event_Destroy_Args::new();
        a.event = self.raw.as_ptr();
        // A failure to destroy cannot be reported from drop; the plugin keeps the error.
        // SAFETY: the event is ours, destroyed once, here.
        let _ = unsafe { call!(self.plugin, PJRT_Event_Destroy, &mut a) };
    }
}

/// Waits for an optional event the plugin returned, and destroys it.
///
/// # Safety
/// As [`Event::from_raw`].
pub(crate) unsafe fn wait_raw(plugin: &Arc<Plugin>, raw: *mut ffi::PJRT_Event) -> Result<()> {
    // SAFETY: the caller's contract.
    match unsafe { Event::from_raw(plugin, raw) } {
        Some(e) => e.wait(),
        None => Ok(()),
    }
}
