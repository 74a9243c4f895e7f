//! The on-disk structures that both the host tool and a running keel system read and change:
//!
//! - [`gpt`]: GUID partition tables, written whole or read back (with limits and checksums)
//!   and changed in place.
//! - [`verity`]: dm-verity hash trees in `veritysetup format`'s layout, and the `keel.verity*`
//!   command line that names them.
//! - [`uki`]: unified kernel images (PE32+): built from systemd's EFI stub, their sections read,
//!   their signature stripped, their PCR 11 predicted.
//! - [`authenticode`]: UKI signatures checked in Rust, as `sbverify` checks them.
//! - [`ab`]: the A/B layout's versions, UKI names with systemd-boot's boot counter, and the
//!   ESP's files read and changed in place.
//! - [`running`]: the running A/B system: its boot disk, slot and version, and what each slot
//!   holds.
//! - [`update`]: an A/B update written into the other slot, the same on the host and in the
//!   guest.
//!
//! Nothing here runs a program, so keel's PID 1 and `keelctl` link it
//! for the musl targets as the host tool does.

pub mod ab;
pub mod authenticode;
mod error;
pub mod gpt;
pub mod running;
pub mod uki;
pub mod update;
pub mod verity;

pub use error::Error;
