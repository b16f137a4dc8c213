//! `PJRT_Event`: completion of an asynchronous transfer or execution.

use std::ptr::NonNull;
use std::sync::Arc;

use super::{args, call, ffi, plugin::Plugin};
use crate::Result;

/// An owned PJRT event, destroyed on drop.
pub(crate) struct Event {
    plugin: Arc<Plugin>,
    raw: NonNull<ffi::PJRT_Event>,
}

impl Event {
    /// Wraps an event the plugin returned; `None` for a null pointer.
    pub(crate) fn from_raw(plugin: &Arc<Plugin>, raw: *mut ffi::PJRT_Event) -> Option<Event> {
        NonNull::new(raw).map(|raw| Event { plugin: plugin.clone(), raw })
    }

    /// Whether the event is ready, without blocking.
    pub(crate) fn is_ready(&self) -> Result<bool> {
        let mut a = args!(PJRT_Event_IsReady_Args);
        a.event = self.raw.as_ptr();
        call!(self.plugin, PJRT_Event_IsReady, &mut a)?;
        Ok(a.is_ready)
    }

    /// The error a ready event carries, if any.
    pub(crate) fn into_error(self) -> Result<()> {
        let mut a = args!(PJRT_Event_Error_Args);
        a.event = self.raw.as_ptr();
        call!(self.plugin, PJRT_Event_Error, &mut a)
    }

    /// Blocks until the event is ready; returns the error it carries, if any.
    pub(crate) fn wait(self) -> Result<()> {
        let mut a = args!(PJRT_Event_Await_Args);
        a.event = self.raw.as_ptr();
        call!(self.plugin, PJRT_Event_Await, &mut a)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Event_Destroy_Args);
        a.event = self.raw.as_ptr();
        // A failure to destroy cannot be reported from drop; the plugin keeps the error.
        let _ = call!(self.plugin, PJRT_Event_Destroy, &mut a);
    }
}

/// Waits for an optional event the plugin returned.
pub(crate) fn wait_raw(plugin: &Arc<Plugin>, raw: *mut ffi::PJRT_Event) -> Result<()> {
    match Event::from_raw(plugin, raw) {
        Some(e) => e.wait(),
        None => Ok(()),
    }
}
