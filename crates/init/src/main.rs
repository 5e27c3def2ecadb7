//! The initramfs's `/init`. Everything is in the library; see its docs.

fn main() {
    maculaos_init::main()
}
