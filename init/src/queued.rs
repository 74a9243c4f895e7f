//! Output queued for a non-blocking descriptor (the console prompt, the host channel): PID 1
//! writes what the descriptor takes now and keeps the rest for its next POLLOUT.

use std::io::{ErrorKind, Result, Write};

/// Writes as much of `pending` as `out` accepts without blocking and removes it. `Ok` when
/// everything went or the descriptor is full for now; an error is the descriptor's own.
pub fn write_pending(out: &mut impl Write, pending: &mut Vec<u8>) -> Result<()> {
    while !pending.is_empty() {
        match out.write(pending) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` bytes, then would block.
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(3);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_what_fits_and_keeps_the_rest() {
        let mut out = Narrow {
            taken: Vec::new(),
            room: 7,
        };
        let mut pending = b"hello, world".to_vec();
        write_pending(&mut out, &mut pending).unwrap();
        assert_eq!(out.taken, b"hello, ");
        assert_eq!(pending, b"world");
        out.room = 100;
        write_pending(&mut out, &mut pending).unwrap();
        assert!(pending.is_empty());
        assert_eq!(out.taken, b"hello, world");
    }
}
