//! Runs through an ORT `IoBinding`: outputs bound to host-readable memory of the session's
//! device and inputs bound at each run, both released after it.
//!
//! Why: with `Session::run` on CUDA, ORT allocates each output on the device and then copies it
//! into ordinary (pageable) host memory, which the driver stages through a pinned bounce buffer.
//! Bound to CUDA-pinned host memory (`MemoryType::CPUOutput`), outputs land where the device can
//! write them by DMA and where `convert::from_ort_value` reads them, one copy fewer. Inputs are
//! bound (copied to the device) once per run by `bind_input`, not by the run call.
//!
//! Outputs are bound anew at every run: after a run ORT keeps the allocated outputs in the
//! binding and treats them as pre-allocated at the next one, which then fails when the batch
//! size changed (found by the tests). Releasing them after the run also keeps an idle session
//! from holding a large request's buffers.
//!
//! On CPU the binding changes nothing but the call path: outputs are bound to CPU memory, and
//! the answers are bit-identical to the plain path (tested). String outputs are always bound to
//! CPU memory: no device holds string tensors.

use chorus_common::{DataType, ExecutionProvider, TensorSpec};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionOutputs};
use ort::value::DynValue;

/// A session's binding, made once per session, and where each output goes.
pub struct Binding {
    io: IoBinding,
    outputs: Vec<(String, MemoryInfo<'static>)>,
}

impl Binding {
    /// Chooses host-readable memory for every output in `outputs` of `session` (running on
    /// `provider`) and checks that ORT takes the binding; ORT checks the memory itself only at
    /// the first run, which the load's warm-up makes.
    pub fn new(
        session: &Session,
        provider: ExecutionProvider,
        outputs: &[TensorSpec],
    ) -> Result<Self, String> {
        let failed = |what: &str, e: ort::Error| format!("io_binding: {what}: {e}");
        let io = session
            .create_binding()
            .map_err(|e| failed("cannot create the binding", e))?;
        let cpu = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| failed("cpu memory info", e))?;
        let host = match provider {
            ExecutionProvider::Cpu => None,
            ExecutionProvider::Cuda { device_id } => Some(
                MemoryInfo::new(
                    AllocationDevice::CUDA_PINNED,
                    device_id,
                    AllocatorType::Device,
                    MemoryType::CPUOutput,
                )
                .map_err(|e| failed("cuda pinned memory info", e))?,
            ),
        };
        let outputs = outputs
            .iter()
            .map(|spec| {
                let memory = match &host {
                    Some(pinned) if spec.datatype != DataType::Bytes => pinned,
                    _ => &cpu,
                };
                (spec.name.clone(), memory.to_owned())
            })
            .collect();
        let mut binding = Binding { io, outputs };
        binding.bind_outputs()?;
        binding.release();
        Ok(binding)
    }

    fn bind_outputs(&mut self) -> Result<(), String> {
        for (name, memory) in &self.outputs {
            self.io
                .bind_output_to_device(name.as_str(), memory)
                .map_err(|e| format!("io_binding: cannot bind output '{name}': {e}"))?;
        }
        Ok(())
    }

    /// Binds `inputs` and runs `session` on them. The outputs borrow the binding: ORT reuses
    /// their buffers at the next run, so they are copied out before it.
    pub fn run<'b>(
        &'b mut self,
        session: &'b mut Session,
        inputs: Vec<(&str, DynValue)>,
    ) -> Result<SessionOutputs<'b>, String> {
        self.bind_outputs()?;
        for (name, value) in &inputs {
            // An owned value (every `convert::to_ort_value*` result is) is bound without a clone.
            self.io
                .bind_input(*name, value)
                .map_err(|e| format!("io_binding: cannot bind input '{name}': {e}"))?;
        }
        session
            .run_binding(&self.io)
            .map_err(|e| format!("io_binding: {e}"))
    }

    /// Lets go of the last run's inputs (on CUDA, their device copies) and outputs.
    pub fn release(&mut self) {
        self.io.clear();
    }
}

#[cfg(test)]
mod tests;
