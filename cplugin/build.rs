//! Compiles the C half of the plugin ABI: the variadic `nbdkit_*` functions.
fn main() {
    println!("cargo:rerun-if-changed=src/varargs.c");
    cc::Build::new().file("src/varargs.c").warnings(true).compile("nbdforge_cplugin_varargs");
}
