//! Images: a verified OCI blob store, layers unpacked once, layer tars in and out.

pub mod pack;
mod store;
pub mod tar_reader;
pub mod unpack;

pub use store::{GcReport, Image, ImageDefaults, ImageStore};
