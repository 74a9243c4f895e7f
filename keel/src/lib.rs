//! The keel host tool as a library: the build pipeline and the commands around it. The `keel`
//! binary only parses arguments and reports errors.

pub mod assemble;
pub mod build;
pub mod cache;
pub mod cluster;
pub mod ctl;
pub mod hardening;
pub mod input_tar;
pub mod kernel;
pub mod keys;
pub mod lan;
pub mod lock;
pub mod output;
pub mod pkg;
pub mod progress;
pub mod run;
pub mod sbom;
pub(crate) mod sys;
pub mod tools;
pub mod update;
pub mod verify;

/// Makes SIGINT, SIGTERM and SIGHUP remove the unfinished outputs of a build (its temporary
/// files) before keel ends; for commands that write outputs or the image store.
pub fn remove_unfinished_outputs_on_termination() -> nix::Result<()> {
    fn cleanup() {
        let removed = keel_rootfs::remove_unfinished();
        if removed > 0 {
            eprintln!("keel: interrupted; removed {removed} unfinished output file(s)");
        }
    }
    sys::clean_up_on_termination(cleanup)
}
