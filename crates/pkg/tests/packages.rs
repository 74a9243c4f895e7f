//! The packages shipped in `pkg/` parse, and their `files: source:` entries exist.

use keel_config::build_yml::{self, PkgContent};
use std::path::Path;

#[test]
fn shipped_packages_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pkg");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let yml = dir.join(keel_pkg::BUILD_YML);
        if !yml.exists() {
            continue;
        }
        let m = build_yml::load(&yml).unwrap_or_else(|e| panic!("{e}"));
        for f in &m.files {
            if let PkgContent::Source(s) = &f.content {
                assert!(
                    dir.join(s.as_str()).exists(),
                    "{}: {} is missing",
                    f.loc,
                    s.value
                );
            }
        }
        assert!(
            dir.join("README.md").exists(),
            "{} has no README.md",
            dir.display()
        );
        seen.push(m);
    }
    let init = seen
        .iter()
        .find(|m| m.image.as_str() == "keel/init")
        .expect("pkg/init");
    let paths: Vec<&str> = init.binaries.iter().map(|b| b.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/init", "/usr/libexec/keel-shim", "/usr/bin/keelctl"]
    );
    assert!(init.debs.is_empty(), "no Debian packages in init");
    assert!(seen.iter().any(|m| m.image.as_str() == "keel/busybox"));
}
