//! Host identity and the loopback device: hostname from `/etc/hostname` or the first NIC's MAC.

use std::path::Path;

/// The hostname to use: `/etc/hostname`'s first word, else `keel-<MAC without colons>` of the
/// first non-loopback interface (by name) with a non-zero address, else `keel`.
pub fn choose_hostname(etc_hostname: Option<&str>, nics: &[(String, String)]) -> String {
    if let Some(name) = etc_hostname.and_then(|t| t.split_ascii_whitespace().next()) {
        return name.to_owned();
    }
    let mut nics: Vec<_> = nics
        .iter()
        .filter(|(name, mac)| {
            name != "lo" && mac.chars().any(|c| c.is_ascii_hexdigit() && c != '0')
        })
        .collect();
    nics.sort();
    match nics.first() {
        Some((_, mac)) => format!("keel-{}", mac.replace(':', "")),
        None => "keel".to_owned(),
    }
}

/// `(name, MAC)` of every interface in `class_net` (`/sys/class/net`).
pub fn interfaces(class_net: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(class_net) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mac = std::fs::read_to_string(e.path().join("address")).ok()?;
            Some((name, mac.trim().to_owned()))
        })
        .collect()
}

/// Sets the hostname and brings the loopback device up.
pub fn setup() {
    let etc = std::fs::read_to_string("/etc/hostname").ok();
    let name = choose_hostname(etc.as_deref(), &interfaces(Path::new("/sys/class/net")));
    match nix::unistd::sethostname(&name) {
        Ok(()) => log::info!("hostname {name}"),
        Err(e) => log::error!("cannot set hostname {name}: {e}"),
    }
    if let Err(e) = crate::sys::interface_up("lo") {
        log::error!("cannot bring up lo: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(n: &str, m: &str) -> (String, String) {
        (n.to_owned(), m.to_owned())
    }

    #[test]
    fn hostname_rules() {
        let nics = [
            nic("lo", "00:00:00:00:00:00"),
            nic("eth1", "52:54:00:12:34:57"),
            nic("eth0", "52:54:00:12:34:56"),
        ];
        assert_eq!(choose_hostname(Some("box\n"), &nics), "box");
        assert_eq!(choose_hostname(Some("  \n"), &nics), "keel-525400123456");
        assert_eq!(choose_hostname(None, &nics[..1]), "keel");
    }
}
