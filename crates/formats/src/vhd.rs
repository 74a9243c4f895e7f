//! Fixed VHD: a raw disk followed by the 512-byte VHD footer (Virtual Hard Disk Image Format
//! Specification, "Hard Disk Footer Format").
//!
//! The creator application is `qem2`, as in the VHDs `qemu-img` (and so LinuxKit) writes: it
//! tells readers that the footer's size, not the CHS geometry, is the disk's size, so QEMU
//! does not cut the disk down to a whole number of cylinders.

use crate::gpt::Guid;

/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01T00:00:00Z.
const VHD_EPOCH: u64 = 946_684_800;
/// `Wi2k`: the host OS Hyper-V and qemu-img write.
const HOST_OS: &[u8; 4] = b"Wi2k";

/// The CHS geometry of the specification's appendix for a disk of `sectors` sectors:
/// (cylinders, heads, sectors per track).
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The footer of a fixed VHD whose data (the raw disk before it) is `size` bytes. `mtime` is
/// the build time (Unix seconds); the unique ID is derived from `seed`.
pub fn fixed_vhd_footer(size: u64, mtime: u64, seed: &[u8]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let stamp = u32::try_from(mtime.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes());
    f[36..40].copy_from_slice(HOST_OS);
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes());
    f[68..84].copy_from_slice(&Guid::derive(seed, "vhd").bytes());
    let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_fields() {
        let f = fixed_vhd_footer(64 << 20, VHD_EPOCH + 10, b"disk");
        assert_eq!(&f[..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 64 << 20);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 10);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        // The checksum is the one's complement of the byte sum without it.
        let mut copy = f;
        copy[64..68].fill(0);
        let sum: u32 = copy.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
        assert_eq!(f, fixed_vhd_footer(64 << 20, VHD_EPOCH + 10, b"disk"));
        assert_ne!(
            f[68..84],
            fixed_vhd_footer(64 << 20, VHD_EPOCH + 10, b"other")[68..84]
        );
    }

    #[test]
    fn geometry_per_specification() {
        // 64 MiB = 131072 sectors: 17 sectors/track gives 7710 cylinder-heads, 8 heads.
        assert_eq!(geometry(131_072), (963, 8, 17));
        // Past 65535*16*255 sectors the geometry saturates.
        assert_eq!(geometry(u64::MAX / 512), (65535, 16, 255));
    }
}
