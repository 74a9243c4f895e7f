//! An interrupted run: what its signal watcher removes. Alone in this test binary because
//! `remove_unfinished` takes every temporary file of the process.

use keel_rootfs::{AtomicFile, remove_unfinished};
use std::io::Write;

#[test]
fn the_watcher_removes_what_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut done = AtomicFile::create(dir.path().join("a.img")).unwrap();
    done.write_all(b"a").unwrap();
    done.commit().unwrap();
    let mut open = AtomicFile::create(dir.path().join("b.img")).unwrap();
    open.write_all(b"b").unwrap();
    let temp = open.temp_path().to_path_buf();
    assert!(temp.exists());
    assert_eq!(remove_unfinished(), 1);
    assert!(!temp.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["a.img"]);
    // Dropping it afterwards is harmless.
    drop(open);
    assert_eq!(remove_unfinished(), 0);
}
