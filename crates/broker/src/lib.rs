//! taskstream's own single-node broker (work in progress).
pub mod storage;
