//! The keel host tool as a library: the build pipeline and the commands around it. The `keel`
//! binary only parses arguments and reports errors.

pub mod assemble;
pub mod build;
pub mod cache;
pub mod ctl;
pub mod kernel;
pub mod lock;
pub mod output;
pub mod pkg;
pub mod run;
pub(crate) mod sys;
pub mod tools;
