//! The power button: input devices that report KEY_POWER (the ACPI button on x86_64, gpio-keys
//! on arm64 virt). A press means an orderly power off.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const EV_KEY: u16 = 1;
const KEY_POWER: u32 = 116;
/// `struct input_event` on 64-bit targets: a 16-byte timeval, type, code, value.
const EVENT_SIZE: usize = 24;

/// Whether the key bitmap of `/sys/class/input/*/capabilities/key` (hex words of
/// `word_bits` bits, most significant first) has `code` set.
pub fn has_key(bitmap: &str, code: u32, word_bits: u32) -> bool {
    let words: Vec<&str> = bitmap.split_ascii_whitespace().collect();
    let index = (code / word_bits) as usize;
    let Some(word) = words
        .len()
        .checked_sub(index + 1)
        .and_then(|i| words.get(i))
    else {
        return false;
    };
    u64::from_str_radix(word, 16).is_ok_and(|w| w >> (code % word_bits) & 1 == 1)
}

/// Whether `buf` (whole input events) holds a KEY_POWER press.
pub fn power_pressed(buf: &[u8]) -> bool {
    buf.chunks_exact(EVENT_SIZE).any(|e| {
        let ty = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        ty == EV_KEY && u32::from(code) == KEY_POWER && value == 1
    })
}

/// Opens every `/dev/input/eventN` whose device has a power key (non-blocking).
pub fn open_buttons() -> Vec<File> {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let caps = e.path().join("device/capabilities/key");
        let Ok(bitmap) = std::fs::read_to_string(&caps) else {
            continue;
        };
        if !has_key(&bitmap, KEY_POWER, usize::BITS) {
            continue;
        }
        let dev = Path::new("/dev/input").join(&name);
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&dev)
        {
            Ok(f) => {
                log::info!("power button: {}", dev.display());
                out.push(f);
            }
            Err(e) => log::warn!("cannot open {}: {e}", dev.display()),
        }
    }
    out
}

/// Reads what is pending on a button device; true when the power key was pressed.
pub fn read_press(file: &mut File) -> bool {
    use std::io::Read;
    let mut buf = [0u8; EVENT_SIZE * 16];
    let mut pressed = false;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        pressed |= power_pressed(&buf[..n]);
    }
    pressed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bitmaps() {
        // The ACPI power button as the kernel prints it on a 64-bit machine.
        assert!(has_key("10000000000000 0", KEY_POWER, 64));
        assert!(!has_key("0", KEY_POWER, 64));
        assert!(!has_key("10000000000000 0", 115, 64));
        assert!(!has_key("", KEY_POWER, 64));
    }

    #[test]
    fn press_events() {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&(KEY_POWER as u16).to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        let mut two = vec![0u8; EVENT_SIZE];
        two.extend_from_slice(&ev);
        assert!(power_pressed(&two));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!power_pressed(&ev), "release is not a press");
    }
}
