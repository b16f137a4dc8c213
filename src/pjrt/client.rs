//! `PJRT_Client` and its devices.

use std::ptr::NonNull;
use std::sync::Arc;

use super::options::ClientOptions;
use super::plugin::{plugin_str, Plugin};
use super::{call, ffi};
use crate::{Error, Result};

/// A PJRT client: the runtime of one plugin. Cheap to clone; buffers, devices and
/// executables keep it alive.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub(crate) plugin: Arc<Plugin>,
    pub(crate) raw: NonNull<ffi::PJRT_Client>,
}

// SAFETY: a PJRT_Client wraps an xla::PjRtClient, whose methods are thread-safe (pjrt_client.h:
// "PjRtClient ... is thread-safe"); the C API header attaches no thread affinity to it.
unsafe impl Send for ClientInner {}
// SAFETY: see `Send`.
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Client_Destroy_Args::new();
        a.client = self.raw.as_ptr();
        // SAFETY: the client is alive until here and destroyed once; every buffer, device and
        // executable holds an `Arc` of this `ClientInner`, so none outlives it.
        let _ = unsafe { call!(self.plugin, PJRT_Client_Destroy, &mut a) };
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("platform", &self.platform_name())
            .field("plugin", &self.inner.plugin)
            .finish()
    }
}

/// A device of a client. Borrowed from the client, which it keeps alive.
#[derive(Clone)]
pub struct Device {
    pub(crate) client: Arc<ClientInner>,
    pub(crate) raw: NonNull<ffi::PJRT_Device>,
}

// SAFETY: a PJRT_Device is owned by its client and immutable to users; reading its
// description is thread-safe like the client itself.
unsafe impl Send for Device {}
// SAFETY: see `Send`.
unsafe impl Sync for Device {}

impl Client {
    /// Creates a client on an already loaded plugin.
    pub fn with_plugin(plugin: Arc<Plugin>) -> Result<Client> {
        Client::with_options(plugin, &ClientOptions::default())
    }

    /// Creates a client with plugin-specific create options.
    pub fn with_options(plugin: Arc<Plugin>, options: &ClientOptions) -> Result<Client> {
        let named = options.to_named_values();
        let mut a = ffi::PJRT_Client_Create_Args::new();
        a.create_options = named.as_ptr();
        a.num_options = named.len();
        // SAFETY: `named` (and the names and values it borrows from `options`) outlives the
        // call; the key-value callbacks are null, which the header allows.
        unsafe { call!(plugin, PJRT_Client_Create, &mut a) }?;
        let raw = NonNull::new(a.client).ok_or(Error::Pjrt {
            call: "PJRT_Client_Create",
            code: crate::ErrorCode::Internal,
            message: "returned a null client".into(),
        })?;
        Ok(Client { inner: Arc::new(ClientInner { plugin, raw }) })
    }

    /// The plugin this client runs on.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    pub(crate) fn raw(&self) -> *mut ffi::PJRT_Client {
        self.inner.raw.as_ptr()
    }

    /// The platform name, e.g. `cpu` or `cuda`.
    pub fn platform_name(&self) -> Result<String> {
        let mut a = ffi::PJRT_Client_PlatformName_Args::new();
        a.client = self.raw();
        // SAFETY: the client is alive (`self` holds it).
        unsafe { call!(self.inner.plugin, PJRT_Client_PlatformName, &mut a) }?;
        // SAFETY: the client owns the name while it lives; copied at once.
        Ok(unsafe { plugin_str(a.platform_name, a.platform_name_size) })
    }

    /// The platform version string.
    pub fn platform_version(&self) -> Result<String> {
        let mut a = ffi::PJRT_Client_PlatformVersion_Args::new();
        a.client = self.raw();
        // SAFETY: the client is alive (`self` holds it).
        unsafe { call!(self.inner.plugin, PJRT_Client_PlatformVersion, &mut a) }?;
        // SAFETY: the client owns the version string while it lives; copied at once.
        Ok(unsafe { plugin_str(a.platform_version, a.platform_version_size) })
    }

    /// The devices this process can address.
    pub fn devices(&self) -> Result<Vec<Device>> {
        let mut a = ffi::PJRT_Client_AddressableDevices_Args::new();
        a.client = self.raw();
        // SAFETY: the client is alive (`self` holds it).
        unsafe { call!(self.inner.plugin, PJRT_Client_AddressableDevices, &mut a) }?;
        if a.addressable_devices.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the client owns an array of `num_addressable_devices` device pointers that
        // lives as long as the client; we copy the pointers out.
        let raws = unsafe { std::slice::from_raw_parts(a.addressable_devices, a.num_addressable_devices) };
        Ok(raws
            .iter()
            .filter_map(|&d| NonNull::new(d))
            .map(|raw| Device { client: self.inner.clone(), raw })
            .collect())
    }

    /// Whether `device` belongs to this client (a device of another client cannot take its
    /// buffers or run its executables).
    pub fn owns(&self, device: &Device) -> bool {
        Arc::ptr_eq(&self.inner, &device.client)
    }

    /// The device at `index` among [`Client::devices`].
    pub fn device(&self, index: usize) -> Result<Device> {
        let devices = self.devices()?;
        let n = devices.len();
        devices.into_iter().nth(index).ok_or_else(|| {
            Error::invalid("device", format!("index {index} out of range: the client has {n} device(s)"))
        })
    }
}

impl Device {
    /// `Ok` if the device belongs to `client`, else a typed error naming `what` used it.
    pub(crate) fn check_client(&self, client: &Arc<ClientInner>, what: &str) -> Result<()> {
        if Arc::ptr_eq(client, &self.client) {
            return Ok(());
        }
        Err(Error::invalid(
            what,
            format!("device {} belongs to another PJRT client; use a device of this client", self.to_string_lossy()),
        ))
    }

    /// The device's description, which the device owns (a borrowed pointer, valid while the
    /// client lives).
    fn description(&self) -> Result<*mut ffi::PJRT_DeviceDescription> {
        let mut a = ffi::PJRT_Device_GetDescription_Args::new();
        a.device = self.raw.as_ptr();
        // SAFETY: the device is owned by its client, which `self` keeps alive.
        unsafe { call!(self.client.plugin, PJRT_Device_GetDescription, &mut a) }?;
        Ok(a.device_description)
    }

    /// The device's id.
    pub fn id(&self) -> Result<i32> {
        let mut a = ffi::PJRT_DeviceDescription_Id_Args::new();
        a.device_description = self.description()?;
        // SAFETY: the description lives as long as the client, which `self` keeps alive.
        unsafe { call!(self.client.plugin, PJRT_DeviceDescription_Id, &mut a) }?;
        Ok(a.id)
    }

    /// The device kind, e.g. `cpu`.
    pub fn kind(&self) -> Result<String> {
        let mut a = ffi::PJRT_DeviceDescription_Kind_Args::new();
        a.device_description = self.description()?;
        // SAFETY: the description lives as long as the client, which `self` keeps alive.
        unsafe { call!(self.client.plugin, PJRT_DeviceDescription_Kind, &mut a) }?;
        // SAFETY: the description owns the string; copied at once.
        Ok(unsafe { plugin_str(a.device_kind, a.device_kind_size) })
    }

    /// A short human-readable name of the device.
    pub fn to_string_lossy(&self) -> String {
        let describe = || -> Result<String> {
            let mut a = ffi::PJRT_DeviceDescription_ToString_Args::new();
            a.device_description = self.description()?;
            // SAFETY: the description lives as long as the client, which `self` keeps alive.
            unsafe { call!(self.client.plugin, PJRT_DeviceDescription_ToString, &mut a) }?;
            // SAFETY: the description owns the string; copied at once.
            Ok(unsafe { plugin_str(a.to_string, a.to_string_size) })
        };
        describe().unwrap_or_else(|e| format!("<device: {e}>"))
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}
