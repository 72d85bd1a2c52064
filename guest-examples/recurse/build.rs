//! Gives the guest a 64 MiB shadow stack (Rust keeps address-taken locals in
//! linear memory), so the recursion overflows the host's wasm stack limit
//! first, which is what this example demonstrates.
fn main() {
    println!("cargo:rustc-link-arg=-zstack-size=67108864");
}
