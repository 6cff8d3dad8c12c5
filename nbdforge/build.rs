//! The binary exports the `nbdkit_*` functions of the C plugin ABI to the plugins it loads, and
//! nothing else: a dynamic list rather than `-rdynamic`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let list = format!("{dir}/../cplugin/nbdkit-symbols.list");
    println!("cargo:rerun-if-changed={list}");
    println!("cargo:rustc-link-arg-bins=-Wl,--dynamic-list={list}");
}
