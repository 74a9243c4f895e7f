//! Golden tests: each `golden/NAME.yml` is loaded (with image configs from
//! `golden/NAME.images.json`, keyed by image reference) and every container's generated
//! `config.json` and `runtime.json` is compared byte-for-byte with
//! `golden/NAME.SECTION.BUNDLE.{config,runtime}.json`; the merged YAML with `NAME.merged.yml`.
//! `KEEL_BLESS=1` rewrites the expected files (review them by hand: they are the spec).

use keel_config::{ImageConfig, Source, SpecContext, generate, image_label, load};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn resolver(p: &Path) -> Result<String, String> {
    let name = p
        .file_name()
        .ok_or("no name")?
        .to_string_lossy()
        .into_owned();
    Ok(format!("example.org/pkg/{name}:0123456789abcdef"))
}

fn check(path: &Path, actual: &str, bless: bool, failures: &mut Vec<String>) {
    if bless {
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .map_or(0, |l| l + 1);
            failures.push(format!(
                "{}: differs (first at line {line}); actual:\n{actual}",
                path.display()
            ));
        }
        Err(_) => failures.push(format!(
            "{}: missing; run with KEEL_BLESS=1 and review",
            path.display()
        )),
    }
}

#[test]
fn golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var("KEEL_BLESS").is_ok_and(|v| v == "1");
    let mut ymls: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yml")
                && !p.to_string_lossy().ends_with(".merged.yml")
        })
        .collect();
    ymls.sort();
    assert!(ymls.len() >= 3, "golden fixtures missing");
    let mut failures = Vec::new();
    let mut seen = 0;
    for yml in &ymls {
        let stem = yml.file_stem().unwrap().to_string_lossy().into_owned();
        let images: BTreeMap<String, ImageConfig> =
            match std::fs::read_to_string(dir.join(format!("{stem}.images.json"))) {
                Ok(text) => serde_json::from_str(&text).unwrap(),
                Err(_) => BTreeMap::new(),
            };
        let source = Source::from_file(yml).unwrap();
        let config = load(&[source], &resolver).unwrap_or_else(|e| panic!("{e}"));
        check(
            &dir.join(format!("{stem}.merged.yml")),
            &config.to_yaml().unwrap(),
            bless,
            &mut failures,
        );
        let ids = config.ids();
        for (section, index, c) in config.containers() {
            let image = images.get(c.image.as_str());
            let label = image
                .map(|i| image_label(i, c.image.as_str()).unwrap())
                .unwrap_or_default();
            let ctx = SpecContext::new(&config, &ids, section, index, "x86_64");
            let bundle = generate(c, image, label.as_ref(), &ctx).unwrap_or_else(|e| panic!("{e}"));
            let base = format!(
                "{stem}.{}.{}",
                section.as_str(),
                section.bundle_name(index, &c.name)
            );
            check(
                &dir.join(format!("{base}.config.json")),
                &bundle.config_json().unwrap(),
                bless,
                &mut failures,
            );
            check(
                &dir.join(format!("{base}.runtime.json")),
                &bundle.runtime_json().unwrap(),
                bless,
                &mut failures,
            );
            seen += 1;
        }
    }
    assert!(seen > 5);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
