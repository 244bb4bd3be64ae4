//! The crate's build script: rebuild when a migration is added or changed. The
//! `sqlx::migrate!` macro embeds these folders, and cargo does not otherwise notice a
//! new file in them, so a build could ship without its newest migration.
fn main() {
    println!("cargo:rerun-if-changed=src/store/migrations");
}
