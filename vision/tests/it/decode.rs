//! Every supported format and variant decodes to exactly what Pillow (plus transformers'
//! `convert_to_rgb`) gives, lossy codecs included.

use tessera_vision::decode::{DecodeOptions, composite_on_white, load_rgb};

use crate::common::{fixture, meta};

#[test]
fn formats_match_pillow() {
    let meta = meta();
    let images = meta["images"].as_object().unwrap();
    assert!(images.len() >= 20, "the generator lists {} images", images.len());
    let opts = DecodeOptions::default();
    let mut report = Vec::new();
    for (name, info) in images {
        let got = load_rgb(&fixture("images").join(name), &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = load_rgb(&fixture("images").join(info["expected"].as_str().unwrap()), &opts).unwrap();
        assert_eq!(
            got.dimensions(),
            expected.dimensions(),
            "{name}: size (EXIF orientation?)"
        );
        let diffs: Vec<i32> = got
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let max = diffs.iter().copied().max().unwrap();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        report.push(format!("{name}: max {max} mean {mean:.3}"));
        assert_eq!(max, 0, "{name} differs from Pillow's decode (mean diff {mean:.3})");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn alpha_composite_matches_pillow_for_every_value_and_alpha() {
    let opts = DecodeOptions::default();
    let src = image::open(fixture("composite.png")).unwrap().to_rgba8();
    let expected = load_rgb(&fixture("composite.expected.png"), &opts).unwrap();
    for (p, e) in src.pixels().zip(expected.pixels()) {
        let [r, g, b, a] = p.0;
        let got = [
            composite_on_white(r, a),
            composite_on_white(g, a),
            composite_on_white(b, a),
        ];
        assert_eq!(got, e.0, "rgba {:?}", p.0);
    }
    // And through the decoder.
    assert_eq!(load_rgb(&fixture("composite.png"), &opts).unwrap(), expected);
}
