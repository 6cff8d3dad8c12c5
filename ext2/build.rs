// Links libext2fs and libcom_err (its error messages) through pkg-config.
fn main() {
    for lib in ["ext2fs", "com_err"] {
        if let Err(e) = pkg_config::Config::new().probe(lib) {
            panic!("nbdforge-ext2 needs {lib} (Debian: apt-get install libext2fs-dev comerr-dev): {e}");
        }
    }
}
