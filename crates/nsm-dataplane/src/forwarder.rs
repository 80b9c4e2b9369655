//! placeholder
/// placeholder
pub struct KernelDataplane;
