//! Bytes in use in a session's memory arena (the CUDA arena on a GPU), read through ONNX
//! Runtime's `AllocatorGetStats`.
//!
//! The `ort` crate wraps allocators but not their statistics, so this is the worker's one call
//! into the raw C API (`ort::sys`). It is kept to a single function with every pointer's owner
//! stated. The same code reads the CPU arena, which is how it is tested without a GPU.

use ort::AsPointer;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use std::ffi::CStr;
use std::ptr;

/// The session's arena allocator on one device.
pub struct ArenaProbe {
    allocator: Allocator,
}

impl ArenaProbe {
    /// The arena of `session` on CUDA device `device_id`, or on the CPU with `None`.
    pub fn new(session: &Session, cuda_device: Option<i32>) -> Result<Self, String> {
        let (device, id) = match cuda_device {
            Some(id) => (AllocationDevice::CUDA, id),
            None => (AllocationDevice::CPU, 0),
        };
        let info = MemoryInfo::new(device, id, AllocatorType::Arena, MemoryType::Default)
            .map_err(|e| e.to_string())?;
        let allocator = Allocator::new(session, info).map_err(|e| e.to_string())?;
        Ok(ArenaProbe { allocator })
    }

    /// The arena's `InUse` statistic in bytes; an error where the allocator keeps no statistics
    /// (not an arena).
    pub fn in_use_bytes(&self) -> Result<u64, String> {
        let api = ort::api();
        let mut stats: *mut ort::sys::OrtKeyValuePairs = ptr::null_mut();
        // SAFETY: the allocator pointer is live while `self.allocator` is; `stats` is an
        // out-pointer that ORT fills with pairs this function owns and releases below.
        let status = unsafe { (api.AllocatorGetStats)(self.allocator.ptr(), &mut stats) };
        if !status.0.is_null() {
            // SAFETY: a non-null status is ORT's, owned here: read its message, then release it.
            let message = unsafe {
                let text = CStr::from_ptr((api.GetErrorMessage)(status.0))
                    .to_string_lossy()
                    .into_owned();
                (api.ReleaseStatus)(status.0);
                text
            };
            return Err(message);
        }
        if stats.is_null() {
            return Err("ONNX Runtime returned no allocator statistics".into());
        }
        // SAFETY: `stats` is non-null and ours; the value pointer, when non-null, is a C string
        // owned by `stats`, copied out before `stats` is released.
        let in_use = unsafe {
            let value = (api.GetKeyValue)(stats, c"InUse".as_ptr());
            let text =
                (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned());
            (api.ReleaseKeyValuePairs)(stats);
            text
        };
        let text = in_use.ok_or("the allocator keeps no `InUse` statistic (not an arena)")?;
        text.parse()
            .map_err(|e| format!("allocator statistic InUse = {text:?}: {e}"))
    }
}
