// Present only so that this crate's build-dependencies count (see Cargo.toml).
fn main() {}
